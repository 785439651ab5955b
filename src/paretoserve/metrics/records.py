"""Per-request records: the common output of `simulate` and `bench` (one JSON line each).

Times are seconds from the start of the run (the trace's t = 0), so a simulated and a measured run
of the same trace can be compared line by line. Metric definitions (DESIGN §3):

- TTFT = first_token_s - arrival_s (queueing included)
- E2E  = last_token_s - arrival_s
- TPOT = (E2E - TTFT) / (output_tokens - 1), undefined for one output token
- ITL  = every gap between consecutive streamed tokens (`itl_s`, when recorded)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request.

    Attributes:
        request_id: the request's id in its trace.
        arrival_s: when it arrived (or was sent), seconds from run start.
        prompt_tokens: prompt length in tokens (as sent / as simulated).
        output_tokens: tokens actually produced (0 when it failed before the first token).
        scheduled_s: when the engine first scheduled it (None when not known, e.g. measured runs).
        first_token_s: when its first output token was produced / received.
        last_token_s: when its last output token was produced / received.
        preemptions: times it was preempted (simulated runs).
        replica: index of the replica (or prefill replica) that served it.
        error: None when it completed; otherwise a short error kind and message.
        itl_s: gaps between consecutive output tokens in seconds, when recorded.
        cached_prompt_tokens: prompt tokens served from the prefix cache.
    """

    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    preemptions: int = 0
    replica: int | None = None
    error: str | None = None
    itl_s: list[float] | None = None
    cached_prompt_tokens: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the request completed with at least one token."""
        return self.error is None and self.first_token_s is not None and self.last_token_s is not None

    @property
    def ttft_s(self) -> float | None:
        """Time to first token in seconds, queueing included."""
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        """End-to-end latency in seconds."""
        return None if self.last_token_s is None else self.last_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first, in seconds (None for < 2 output tokens)."""
        if self.first_token_s is None or self.last_token_s is None or self.output_tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)

    def to_json(self) -> str:
        """One JSON line, keys in a fixed order, no trailing newline; empty optionals omitted.

        Built field by field rather than with `dataclasses.asdict` (which deep-copies): this is on
        the path of every simulated request.
        """
        data: dict[str, object] = {
            "request_id": self.request_id, "arrival_s": self.arrival_s, "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens, "scheduled_s": self.scheduled_s,
            "first_token_s": self.first_token_s, "last_token_s": self.last_token_s,
            "preemptions": self.preemptions, "replica": self.replica, "error": self.error}
        if self.itl_s is not None:
            data["itl_s"] = self.itl_s
        data["cached_prompt_tokens"] = self.cached_prompt_tokens
        if self.extra:
            data["extra"] = self.extra
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RequestRecord:
        """Build a record from a parsed JSON line (unknown keys go to `extra`)."""
        known = {name for name in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        record = cls(**kwargs)  # type: ignore[arg-type]
        record.extra.update(extra)
        return record
