"""Pipeline-parallel stage timing (vLLM's layer split and micro-batch period).

vLLM (`vllm/distributed/utils.py`, `get_pp_indices`) gives every stage `num_layers // pp` layers and
one more to each of the `num_layers % pp` stages just before the last one (the last stage also
runs the LM head). A batch is held by one stage at a time; up to `pp` batches are in flight, one per
stage (`max_concurrent_batches = pp`, engine_facts §3 "Pipeline parallel"). The simulator times a
stage as the slowest stage's share of the layers plus one activation send to the next stage:

    stage = (full − (pp − 1) × send) × max_layers / num_layers + send

where `full` is one batch through all stages of an empty pipeline (every layer on the tp devices,
plus the pp − 1 sends between stages). A batch's iteration then takes pp × stage seconds, and the
first stage accepts the next batch `stage` seconds after the previous one.
Simplification: embedding and LM head are spread over the stages with the layers.
"""

from __future__ import annotations


def stage_layers(num_layers: int, pp: int) -> tuple[int, ...]:
    """Decoder layers of each of the `pp` stages, as vLLM's `get_pp_indices` splits them."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return tuple(parts)


def slowest_stage_share(num_layers: int, pp: int) -> float:
    """Fraction of the decoder layers on the stage that holds the most."""
    return max(stage_layers(num_layers, pp)) / num_layers


def stage_seconds(full_s: float, send_s: float, share: float, pp: int) -> float:
    """Seconds a stage holds one batch (see the module docstring); `send_s` is one stage-to-stage
    activation transfer, `full_s` the batch's latency through all `pp` stages of an empty pipeline."""
    if pp == 1:
        return full_s
    return (full_s - (pp - 1) * send_s) * share + send_s
