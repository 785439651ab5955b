"""The optional per-iteration trace: one row per engine step (a fast-forwarded run is one row)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields


@dataclass(frozen=True, slots=True)
class IterationRow:
    """One step of one replica.

    Attributes:
        replica: replica index.
        start_s: when the step started, seconds from run start.
        duration_s: seconds it took (all its iterations).
        iterations: engine iterations it covers (> 1 for a fast-forwarded decode run).
        decode_seqs: sequences decoding one token per iteration.
        prefill_seqs: sequences computing a prompt chunk.
        prefill_tokens: prompt tokens computed.
        kv_used: fraction of KV blocks referenced by sequences at its end.
        waiting: requests waiting when it ended.
        running: requests running when it ended.
        preemptions: preemptions on this replica so far.
    """

    replica: int
    start_s: float
    duration_s: float
    iterations: int
    decode_seqs: int
    prefill_seqs: int
    prefill_tokens: int
    kv_used: float
    waiting: int
    running: int
    preemptions: int

    @staticmethod
    def csv_header() -> str:
        """The CSV header line (no newline)."""
        return ",".join(f.name for f in fields(IterationRow))

    def csv_line(self) -> str:
        """This row as a CSV line (no newline); floats with repr precision."""
        return ",".join(repr(v) if isinstance(v, float) else str(v) for v in astuple(self))
