"""The latency-model interface every other layer uses (DESIGN §2)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from paretoserve.perf.pipeline import stage_seconds
from paretoserve.perf.shape import StepShape, StepTime


class StepTimeModel(ABC):
    """Answers: how long does one engine iteration of a given shape take?

    `step_time` gives the per-operator breakdown (for `estimate` and reports); `seconds` is the
    simulator's hot path and may be faster; `decode_run_seconds` answers "k iterations from this
    state" for a decode-only batch, so the simulator can skip through uneventful stretches.
    """

    @abstractmethod
    def step_time(self, shape: StepShape) -> StepTime:
        """Duration of one iteration with its per-operator breakdown."""

    def seconds(self, shape: StepShape) -> float:
        """Duration of one iteration in seconds."""
        return self.step_time(shape).seconds

    def decode_seconds(self, n: int, context_sum: int) -> float:
        """Seconds of one decode-only iteration of `n` sequences whose contexts sum to `context_sum`.

        Models that depend on more than the context sum (e.g. sliding windows) use the mean
        context for every sequence.
        """
        if n <= 0:
            return 0.0
        mean, extra = divmod(context_sum, n)
        decode = (mean + 1,) * extra + (mean,) * (n - extra)
        return self.seconds(StepShape(decode=decode))

    def decode_run_seconds(self, n: int, context_sum: int, k: int) -> float:
        """Total seconds of `k` successive decode-only iterations of the same `n` sequences.

        Iteration i (0-based) has context sum `context_sum + i * n`: every sequence gains one
        token of context per iteration. The default steps through them; subclasses with a
        closed form (the roofline) override it. Must equal the step-by-step sum to rounding.
        """
        return sum(self.decode_seconds(n, context_sum + i * n) for i in range(k))

    #: Pipeline stages of the replica, and the slowest stage's share of the decoder layers.
    pp: int = 1
    stage_share: float = 1.0

    def pp_send_seconds(self, tokens: int) -> float:
        """Seconds of one stage-to-stage activation transfer of `tokens` tokens (0 without PP)."""
        return 0.0

    def stage_seconds(self, shape: StepShape) -> float:
        """Seconds the slowest pipeline stage holds a batch of this shape (`seconds` without PP);
        see `paretoserve.perf.pipeline`."""
        full = self.seconds(shape)
        if self.pp == 1:
            return full
        return stage_seconds(full, self.pp_send_seconds(shape.num_tokens), self.stage_share, self.pp)

    def decode_stage_seconds(self, n: int, context_sum: int) -> float:
        """`stage_seconds` of a decode-only batch (as `decode_seconds`)."""
        full = self.decode_seconds(n, context_sum)
        if self.pp == 1:
            return full
        return stage_seconds(full, self.pp_send_seconds(n), self.stage_share, self.pp)
