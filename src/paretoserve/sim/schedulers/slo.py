"""`slo`: deadline-aware admission (JITServe-style).

Each request's TTFT deadline is arrival + the TTFT target of its SLO class (`ttft_s`, or
`ttft_s:<class>` per class). Waiting requests are admitted earliest deadline first, but a request
whose deadline can no longer be met (now + its estimated prefill time > deadline) moves behind all
requests that still can: serving the attainable ones first maximises goodput. Preempted requests
that already streamed tokens resume first.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from paretoserve.errors import UserError
from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.sim.schedulers.base import Scheduler
from paretoserve.sim.sequence import Sequence

if TYPE_CHECKING:
    from paretoserve.sim.config import EngineConfig
    from paretoserve.sim.replica import Replica

_Entry = tuple[float, int, float, Sequence]  # (deadline s, uid, estimated prefill s, sequence)


class SloScheduler(Scheduler):
    """Earliest TTFT deadline first among requests that can still meet it."""

    name = "slo"
    options = {"ttft_s": 1.0}

    def __init__(self, config: EngineConfig) -> None:
        per_class = {k: v for k, v in config.policy_options.items() if k.startswith("ttft_s:")}
        plain = {k: v for k, v in config.policy_options.items() if k not in per_class}
        super().__init__(_with_options(config, plain))
        self.targets = {k.split(":", 1)[1]: _seconds(k, v) for k, v in per_class.items()}
        self.default_s = self.settings["ttft_s"]
        self.model = config.step_model
        self.on_time: list[_Entry] = []
        self.late: list[_Entry] = []
        self.resumed: deque[Sequence] = deque()

    def __len__(self) -> int:
        return len(self.on_time) + len(self.late) + len(self.resumed)

    def add(self, seq: Sequence, now: float) -> None:
        target = self.targets.get(seq.request.slo_class or "", self.default_s)
        deadline = seq.request.arrival_s + target
        estimate = self.model.seconds(StepShape(prefill=(PrefillChunk(seq.prompt),)))
        heapq.heappush(self.on_time, (deadline, seq.uid, estimate, seq))

    def requeue(self, seq: Sequence) -> None:
        if seq.first_token_s is not None:
            self.resumed.appendleft(seq)
        else:
            self.add(seq, 0.0)

    def admit(self, replica: Replica, budget: int) -> int:
        now = replica.now
        on_time, late = self.on_time, self.late
        while budget > 0 and len(replica.running) < replica.max_seqs:
            while on_time and now + on_time[0][2] > on_time[0][0]:
                heapq.heappush(late, heapq.heappop(on_time))
            if self.resumed:
                queue: object = self.resumed
                seq = self.resumed[0]
            elif on_time:
                queue, seq = on_time, on_time[0][3]
            elif late:
                queue, seq = late, late[0][3]
            else:
                break
            tokens = replica.try_admit(seq, budget)
            if not tokens:
                break
            if queue is self.resumed:
                self.resumed.popleft()
            else:
                heapq.heappop(queue)  # type: ignore[arg-type]
            budget -= tokens
        return budget

    def run_stable(self, replica: Replica) -> bool:
        # The order changes with time, so only a full batch is sure to stay as it is.
        return not len(self) or len(replica.running) >= replica.max_seqs

    def arrival_interrupts(self, replica: Replica) -> bool:
        return True


def _with_options(config: EngineConfig, options: dict[str, object]) -> EngineConfig:
    return replace(config, policy_options=options)


def _seconds(key: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"policy option {key} must be seconds, got {value!r}") from None
