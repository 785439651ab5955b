"""The latency model: how long one engine iteration takes (DESIGN §2)."""

from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.shape import OpTime, PrefillChunk, StepShape, StepTime

__all__ = ["OpTime", "PrefillChunk", "StepShape", "StepTime", "StepTimeModel"]
