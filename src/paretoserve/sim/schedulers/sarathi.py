"""`sarathi`: stall-free batching with a fixed prefill chunk (Sarathi-Serve, OSDI'24).

Decodes run every iteration; prompts are prefilled `chunk_size` tokens per iteration in total (the
last chunk of a prompt may be shorter), so no iteration carries a long prefill that stalls decodes.
"""

from __future__ import annotations

from paretoserve.sim.schedulers.base import Scheduler


class SarathiScheduler(Scheduler):
    """FCFS with at most `chunk_size` (default 512) prefill tokens per iteration."""

    name = "sarathi"
    options = {"chunk_size": 512.0}

    def prefill_budget(self, budget: int) -> int:
        return min(budget, max(1, int(self.settings["chunk_size"])))
