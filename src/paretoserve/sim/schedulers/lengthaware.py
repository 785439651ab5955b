"""`lengthaware`: length-aware dual queue (LAPS-style).

Prompts of at most `threshold` tokens wait in a short queue, longer ones in a long queue. Short
prompts are admitted first, but when long prompts wait a `long_share` of the iteration's prefill
budget is kept for them, so short requests get low TTFT without starving long ones. Budget the
long queue leaves unused goes back to the short queue.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from paretoserve.sim.schedulers.base import Scheduler, admit_in_order
from paretoserve.sim.sequence import Sequence

if TYPE_CHECKING:
    from paretoserve.sim.config import EngineConfig
    from paretoserve.sim.replica import Replica


class LengthAwareScheduler(Scheduler):
    """Two FCFS queues split by prompt length, with a token-budget share for the long one."""

    name = "lengthaware"
    options = {"threshold": 2048.0, "long_share": 0.25}

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.threshold = int(self.settings["threshold"])
        self.long_share = min(1.0, max(0.0, self.settings["long_share"]))
        self.long: deque[Sequence] = deque()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.long)

    def _queue(self, seq: Sequence) -> deque[Sequence]:
        return self.waiting if seq.prompt <= self.threshold else self.long

    def add(self, seq: Sequence, now: float) -> None:
        self._queue(seq).append(seq)

    def requeue(self, seq: Sequence) -> None:
        self._queue(seq).appendleft(seq)

    def admit(self, replica: Replica, budget: int) -> int:
        reserve = int(budget * self.long_share) if self.long else 0
        budget = admit_in_order(self.waiting, replica, budget - reserve) + reserve
        budget = admit_in_order(self.long, replica, budget)
        return admit_in_order(self.waiting, replica, budget)

    def arrival_interrupts(self, replica: Replica) -> bool:
        # A non-empty queue's head is blocked and keeps a new arrival behind it.
        return not self.waiting or not self.long
