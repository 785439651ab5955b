"""`vllm`: vLLM V1's default scheduler (FCFS, chunked prefill, preemption of the newest by recompute).

Each iteration: every running request gets its next token (decodes first), a request part-way
through its prompt continues, then waiting requests are admitted in arrival order with chunked
prefill under the remaining `max_num_batched_tokens`, up to `max_num_seqs` running. The base
`Scheduler` is exactly this policy.
"""

from __future__ import annotations

from paretoserve.sim.schedulers.base import Scheduler


class VllmScheduler(Scheduler):
    """vLLM V1 FCFS scheduling with chunked prefill."""

    name = "vllm"
