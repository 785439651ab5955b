"""The unit of work: one inference request as it arrives at a deployment."""

from __future__ import annotations

from dataclasses import dataclass

#: Most tokens a prompt or an output may have (a hundred times the longest context of any bundled
#: model); readers and length specs refuse larger counts.
MAX_TOKENS = 100_000_000


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace.

    Attributes:
        request_id: unique within its trace.
        arrival_s: arrival time in seconds from the start of the trace (t = 0).
        prompt_tokens: tokens in the prompt (input), >= 1.
        output_tokens: tokens to generate (output), >= 1.
        prefix_hashes: hashes of the prompt's leading blocks of `prefix_block_tokens` tokens each,
            for prefix caching (Mooncake `hash_ids`); equal hashes mean identical token blocks.
        prefix_block_tokens: tokens covered by one entry of `prefix_hashes`.
        session_id: conversation the request belongs to, if known.
        slo_class: name of the SLO class (e.g. "interactive", "batch"), if any.
        priority: scheduling priority, lower is more urgent (vLLM's convention).
    """

    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hashes: tuple[int, ...] = ()
    prefix_block_tokens: int = 512
    session_id: str | None = None
    slo_class: str | None = None
    priority: int = 0
