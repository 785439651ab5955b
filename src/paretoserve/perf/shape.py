"""What one engine iteration computes (`StepShape`) and how long it takes (`StepTime`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """A slice of one request's prompt computed in this iteration.

    Attributes:
        tokens: new prompt tokens computed in this iteration (>= 1).
        context: tokens of the same request already in the KV cache before this chunk
            (earlier chunks and prefix-cache hits); the chunk attends to them and to itself.
        last: True when this chunk completes the prompt, so the step also samples a token for it.
    """

    tokens: int
    context: int = 0
    last: bool = True


@dataclass(frozen=True, slots=True)
class StepShape:
    """One engine iteration: prefill chunks plus decoding sequences (one new token each).

    Attributes:
        prefill: the prefill chunks scheduled in this iteration.
        decode: for each decoding sequence, its context length in tokens (KV entries it attends to,
            including the token being decoded).
    """

    prefill: tuple[PrefillChunk, ...] = ()
    decode: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        """Tokens that go through the model's linear layers in this iteration."""
        return sum(c.tokens for c in self.prefill) + len(self.decode)


Bound = Literal["compute", "memory", "overhead", "comm"]


@dataclass(frozen=True, slots=True)
class OpTime:
    """Time of one operator summed over the layers it appears in.

    Attributes:
        name: operator name (e.g. "attn.qkv_proj", "mlp.gate_up", "tp.allreduce").
        seconds: wall time in seconds.
        flops: floating-point operations.
        bytes: bytes moved to/from device memory (or over the link for communication).
        bound: what limits it: compute, memory, fixed overhead, or communication.
    """

    name: str
    seconds: float
    flops: float
    bytes: float
    bound: Bound


@dataclass(frozen=True, slots=True)
class StepTime:
    """Duration of one iteration in seconds, with the per-operator breakdown."""

    seconds: float
    ops: tuple[OpTime, ...] = ()

    @property
    def flops(self) -> float:
        """Total FLOPs of the iteration."""
        return sum(op.flops for op in self.ops)

    @property
    def bytes(self) -> float:
        """Total bytes moved by the iteration."""
        return sum(op.bytes for op in self.ops)
