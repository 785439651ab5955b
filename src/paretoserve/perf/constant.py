"""A step-time model with a known, simple form — for tests, queueing checks and what-if studies."""

from __future__ import annotations

from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.shape import OpTime, StepShape, StepTime


class LinearStepModel(StepTimeModel):
    """step seconds = base + per_token × tokens + per_context × (decode context sum).

    With `per_token = per_context = 0` every iteration takes exactly `base` seconds (a constant
    service time, as in M/D/1 queueing checks).
    """

    def __init__(self, base_s: float, per_token_s: float = 0.0, per_context_token_s: float = 0.0):
        self.base_s = base_s
        self.per_token_s = per_token_s
        self.per_context_token_s = per_context_token_s

    def step_time(self, shape: StepShape) -> StepTime:
        seconds = self.seconds(shape)
        return StepTime(seconds, (OpTime("step", seconds, 0.0, 0.0, "overhead"),))

    def seconds(self, shape: StepShape) -> float:
        return (self.base_s + self.per_token_s * shape.num_tokens
                + self.per_context_token_s * sum(shape.decode))

    def decode_seconds(self, n: int, context_sum: int) -> float:
        return self.base_s + self.per_token_s * n + self.per_context_token_s * context_sum

    def decode_run_seconds(self, n: int, context_sum: int, k: int) -> float:
        # Sum over i < k of base + per_token*n + per_context*(context_sum + i*n).
        linear = (self.base_s + self.per_token_s * n + self.per_context_token_s * context_sum) * k
        return linear + self.per_context_token_s * n * k * (k - 1) / 2
