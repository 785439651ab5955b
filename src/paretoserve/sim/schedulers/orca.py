"""`orca`: iteration-level batching without chunked prefill (Orca, OSDI'22).

A waiting request is admitted only when its whole prompt fits in the iteration's remaining token
budget; a prompt longer than `max_num_batched_tokens` is admitted alone rather than never.
"""

from __future__ import annotations

from paretoserve.sim.schedulers.base import Scheduler


class OrcaScheduler(Scheduler):
    """FCFS, whole prompts, decodes and prefills in the same iteration."""

    name = "orca"
    whole_prompts = True
