"""An LLM (`ModelSpec`) as a stage chain for the partitioner: heterogeneous pipeline stages.

Units, in order: the embedding, each decoder layer, the LM head. The seconds of each on a device come
from the datasheet step model (`perf.roofline.Roofline.step_time`) for one step of `sequences`
sequences: a prefill of `tokens` prompt tokens each, or a decode step at context `tokens` (one new
token each). The embedding and LM head are their own operators; the decoder layers share the rest
equally, so the model must have one kind of layer (hybrid or mixed-layer models are refused). Between
stages the hidden state of every token crosses the link in bf16 (hidden × 2 bytes per token, as the
step model's pipeline send/recv). Weights must fit each stage's device; the KV cache is not counted.

`attention_offload` is the other way to share an LLM between two device types: the attention
kernels (which read the KV cache) on one device, every other operator on the other; each layer sends
the new tokens' queries, keys and values to the attention device and the attention output back.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes, normalize_dtype
from paretoserve.catalog.links import LinkProfile, Scenario
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.roofline import Efficiency, Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.plan.partition import Partition, SplitPoint, StageChain, chain_energy
from paretoserve.sim.dnn_pipeline import loop_period

_NOT_LAYERS = ("embed", "lm_head")
ATTENTION_OPS = ("attn.prefill", "attn.decode")
ACTIVATION_BYTES = 2.0  # bf16 hidden states


def _shape(phase: str, sequences: int, tokens: int, prefill_tokens: int = 0) -> tuple[StepShape, float]:
    """The step of `sequences` sequences and the new tokens per sequence in it; a decode step may
    also carry a chunk of `prefill_tokens` prompt tokens (vLLM's chunked prefill in a mixed batch)."""
    if phase not in ("prefill", "decode"):
        raise UserError(f"--phase {phase!r}: expected prefill or decode", field="phase")
    if sequences < 1 or tokens < 1 or prefill_tokens < 0:
        raise UserError("sequences (--batch) and --tokens must be >= 1")
    if phase == "prefill":
        return StepShape(prefill=(PrefillChunk(tokens, 0, True),) * sequences), tokens
    chunk = (PrefillChunk(prefill_tokens, 0, False),) if prefill_tokens else ()
    return StepShape(prefill=chunk, decode=(tokens,) * sequences), 1 + prefill_tokens / sequences


def llm_chain(model: ModelSpec, *, phase: Literal["prefill", "decode"] = "prefill", sequences: int = 1,
              tokens: int = 1024, weight_dtype: str | None = None, efficiency: Efficiency | None = None,
              prefill_tokens: int = 0) -> StageChain:
    """The chain of `model` for one prefill or decode step (see the module docstring); a decode step
    with `prefill_tokens` also computes that many prompt tokens (their hidden states cross the links
    too)."""
    shape, tokens_per_sequence = _shape(phase, sequences, tokens, prefill_tokens)
    if len(model.layer_groups) != 1:
        raise UserError(f"{model.name} has {len(model.layer_groups)} kinds of layers; the partitioner splits "
                        "models with one layer kind only")
    layer = model.layer_groups[0][0]
    layers = model.num_layers
    wb = dtype_bytes(normalize_dtype(weight_dtype or model.weight_dtype))
    h = model.hidden_size
    table = model.vocab_size * h * wb
    params = np.array([table, *[layer.params(h)[0] * wb] * layers, table], dtype=float)
    per_sequence = tokens_per_sequence * h * ACTIVATION_BYTES
    activations = np.full(layers + 2, per_sequence * sequences)

    def seconds(device: DeviceSpec) -> np.ndarray:
        ops = Roofline(model, device, weight_dtype=weight_dtype, efficiency=efficiency).step_time(shape).ops
        named = {name: sum(op.seconds for op in ops if op.name == name) for name in _NOT_LAYERS}
        per_layer = sum(op.seconds for op in ops if op.name not in _NOT_LAYERS) / layers
        return np.array([named["embed"], *[per_layer] * layers, named["lm_head"]])

    points = [SplitPoint(k, "embed" if k == 1 else f"layers.{k - 2}", f"layers.{k - 1}" if k <= layers else "lm_head",
                         per_sequence) for k in range(1, layers + 2)]
    return StageChain(model.name, sequences, points, params, activations, seconds)


def attention_offload(model: ModelSpec, dense: DeviceSpec, attention: DeviceSpec, link: LinkProfile, *,
                      phase: Literal["prefill", "decode"] = "decode", sequences: int = 1, tokens: int = 1024,
                      in_flight: int = 3, scenario: Scenario = "p50", weight_dtype: str | None = None,
                      efficiency: Efficiency | None = None, prefill_tokens: int = 0) -> Partition:
    """`model` with attention and KV on `attention` and the rest on `dense` (see the module docstring).

    A decode step may carry `prefill_tokens` prompt tokens (as `llm_chain`). Per step: dense seconds =
    the step model's operators except attention on `dense`; attention
    seconds = its attention operators on `attention`; per layer and direction one message over `link`
    (latency + bytes / bandwidth; the two directions overlap). Latency = the sum of all; throughput =
    sequences / `sim.dnn_pipeline.loop_period` (pipelined) or sequences / latency (sequential).
    """
    shape, tokens_per_sequence = _shape(phase, sequences, tokens, prefill_tokens)
    kinds = {layer.attention.kind for layer, _ in model.layer_groups}
    if kinds != {"gqa"}:
        raise UserError(f"{model.name}: attention offload needs standard (GQA) attention in every layer, "
                        f"got {', '.join(sorted(kinds))}")
    dense_ops = Roofline(model, dense, weight_dtype=weight_dtype, efficiency=efficiency).step_time(shape).ops
    attn_ops = Roofline(model, attention, weight_dtype=weight_dtype, efficiency=efficiency).step_time(shape).ops
    dense_s = sum(op.seconds for op in dense_ops if op.name not in ATTENTION_OPS)
    attention_s = sum(op.seconds for op in attn_ops if op.name in ATTENTION_OPS)
    new_tokens = sequences * tokens_per_sequence
    up = sum(n * (layer.attention.q_dim + layer.attention.kv_values_per_token()) for layer, n in model.layer_groups)
    down = sum(n * layer.attention.o_in_dim for layer, n in model.layer_groups)
    bandwidth, latency = link.at(scenario)
    layers = model.num_layers
    up_s = layers * latency + new_tokens * up * ACTIVATION_BYTES / bandwidth
    down_s = layers * latency + new_tokens * down * ACTIVATION_BYTES / bandwidth
    total = dense_s + attention_s + up_s + down_s
    period = loop_period(np.array([dense_s, attention_s, up_s, down_s]), total, in_flight)
    weights = model.params.total * dtype_bytes(normalize_dtype(weight_dtype or model.weight_dtype))
    busy = np.array([dense_s, attention_s])
    return Partition(
        devices=(dense.name, attention.name), splits=(), stage_s=(dense_s, attention_s), transfer_s=(up_s, down_s),
        latency_s=total, throughput_pipelined=sequences / period, throughput_sequential=sequences / total,
        energy_j_pipelined=chain_energy([dense, attention], busy, period) / sequences,
        energy_j_sequential=chain_energy([dense, attention], busy, total) / sequences,
        feasible=weights <= dense.mem_capacity, kind="attention offload")
