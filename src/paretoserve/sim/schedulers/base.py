"""What a batching policy decides, and the FCFS waiting queue most policies share.

The replica runs the parts every vLLM-style engine shares (one decode token per running sequence,
continuing partial prefills, preemption when KV blocks run out); a policy decides the rest: which
waiting requests to admit and with how many prompt tokens, who is preempted, and whether an
unchanged decode-only batch may be fast-forwarded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from paretoserve.errors import UserError
from paretoserve.sim.sequence import Sequence

if TYPE_CHECKING:
    from paretoserve.sim.config import EngineConfig
    from paretoserve.sim.replica import Replica


class Scheduler:
    """Base policy: FCFS waiting queue, preempted requests back at its front (vLLM V1 `fcfs`).

    Class attributes:
        name: registry name.
        options: accepted `policy_options` keys with their defaults.
        whole_prompts: a prompt is prefilled in one iteration (no chunking).
        swap: preempted requests are swapped to host memory instead of recomputed.
        prefill_first: an iteration that can prefill runs prefill chunks alone, pausing the decodes
            (SGLang without mixed chunks); otherwise decodes and prefill chunks share iterations.
        block_size: the engine's default tokens per KV block (page) under this policy.
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, float]] = {}
    whole_prompts: bool = False
    swap: ClassVar[bool] = False
    prefill_first: bool = False
    block_size: ClassVar[int] = 16

    def __init__(self, config: EngineConfig) -> None:
        unknown = sorted(set(config.policy_options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise UserError(f"policy '{self.name}' has no option {', '.join(unknown)} (known: {known})")
        self.settings = {key: float(config.policy_options.get(key, default))  # type: ignore[arg-type]
                         for key, default in self.options.items()}
        self.waiting: deque[Sequence] = deque()

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, seq: Sequence, now: float) -> None:
        """A request arrives (at `now` seconds)."""
        self.waiting.append(seq)

    def requeue(self, seq: Sequence) -> None:
        """A preempted request goes back to the waiting queue."""
        self.waiting.appendleft(seq)

    def prefill_budget(self, budget: int) -> int:
        """Tokens available to prefill chunks this iteration, out of the `budget` decodes left."""
        return budget

    def admit(self, replica: Replica, budget: int) -> int:
        """Admit waiting requests in order with up to `budget` tokens; returns the budget left."""
        return admit_in_order(self.waiting, replica, budget)

    def victim(self, replica: Replica) -> Sequence:
        """The running request to preempt when KV blocks run out: the newest."""
        return next(reversed(replica.running))

    def run_stable(self, replica: Replica) -> bool:
        """Whether a decode-only batch chosen now stays the choice at every following iteration
        until a request completes, a request arrives, or KV blocks run out.

        FCFS: waiting requests were blocked by the sequence cap or by free blocks, and neither
        loosens while decoding.
        """
        return True

    def arrival_interrupts(self, replica: Replica) -> bool:
        """Whether a new arrival can change the batch at the next iteration boundary.

        FCFS: only when nothing is waiting (otherwise the blocked head still blocks).
        """
        return not self.waiting


def admit_in_order(queue: deque[Sequence], replica: Replica, budget: int) -> int:
    """Admit from the front of `queue` until one does not fit; returns the token budget left."""
    running = replica.running
    max_seqs = replica.max_seqs
    while queue and budget > 0 and len(running) < max_seqs:
        tokens = replica.try_admit(queue[0], budget)
        if not tokens:
            break
        queue.popleft()
        budget -= tokens
    return budget
