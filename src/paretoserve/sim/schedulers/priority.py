"""`priority`: preemptive priority scheduling with KV swapping (FastSwitch-style).

Waiting requests are served by (priority, arrival) — lower priority value is more urgent, as in
vLLM. When the most urgent waiting request cannot be admitted (sequence cap or KV blocks), the least
urgent running request with a strictly larger priority value is preempted; preempted requests are
swapped out to host memory and later swapped back in, each costing KV bytes / `swap_bandwidth`
seconds added to the iteration, instead of being recomputed. Host memory for swapped KV is
not limited.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from paretoserve.sim.schedulers.base import Scheduler
from paretoserve.sim.sequence import Sequence

if TYPE_CHECKING:
    from paretoserve.sim.config import EngineConfig
    from paretoserve.sim.replica import Replica


def _rank(seq: Sequence) -> tuple[int, float, int]:
    return (seq.request.priority, seq.request.arrival_s, seq.uid)


class PriorityScheduler(Scheduler):
    """Most urgent first; swap out the least urgent running request to make room."""

    name = "priority"
    swap = True

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.heap: list[tuple[tuple[int, float, int], Sequence]] = []

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, seq: Sequence, now: float) -> None:
        heapq.heappush(self.heap, (_rank(seq), seq))

    def requeue(self, seq: Sequence) -> None:
        heapq.heappush(self.heap, (_rank(seq), seq))

    def admit(self, replica: Replica, budget: int) -> int:
        heap = self.heap
        while heap and budget > 0:
            rank, seq = heap[0]
            if len(replica.running) < replica.max_seqs:
                tokens = replica.try_admit(seq, budget)
                if tokens:
                    heapq.heappop(heap)
                    budget -= tokens
                    continue
            if not replica.running:
                break
            victim = self.victim(replica)
            if _rank(victim)[0] <= rank[0]:
                break
            budget += replica.preempt(victim)
        return budget

    def victim(self, replica: Replica) -> Sequence:
        """The least urgent running request (largest priority value, then latest arrival)."""
        return max(replica.running, key=_rank)

    def run_stable(self, replica: Replica) -> bool:
        return not self.heap

    def arrival_interrupts(self, replica: Replica) -> bool:
        return True
