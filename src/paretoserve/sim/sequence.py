"""The simulator's mutable state of one request while an engine serves it (vLLM V1 vocabulary).

A sequence has `num_tokens` = prompt + generated tokens and `computed` tokens whose KV is in the
cache. Every engine iteration schedules some of the missing `num_tokens - computed` tokens (a prefill
chunk, or exactly one token while decoding); when `computed` catches up with `num_tokens` the
iteration samples a new token. Preemption by recompute resets `computed` to 0, so the prompt and the
tokens generated so far are computed again.

While a sequence sits in its replica's *decode set*, `computed` and `generated` are not stored but
derived from the replica's decode-iteration counter G: computed = c_key + G, generated = g_key + G
(every decoding sequence gains one token per iteration). This is what lets the replica advance k
iterations in O(1).
"""

from __future__ import annotations

from paretoserve.workload.request import Request

WAITING, RUNNING, DONE = 0, 1, 2


class Sequence:
    """One request inside the simulator; fields in tokens and seconds."""

    __slots__ = (
        "request", "uid", "prompt", "output", "generated", "computed", "state", "in_decode",
        "c_key", "g_key", "g_done", "slot_g", "shared", "shared_blocks", "registered", "hashable",
        "span", "groups", "first_hit",
        "scheduled_s", "first_token_s", "last_token_s", "preemptions", "replica", "decode_replica",
        "handoff", "swapped", "chunk", "fixed",
    )

    def __init__(self, request: Request, uid: int, block_size: int = 16) -> None:
        self.request = request
        self.uid = uid
        self.prompt = request.prompt_tokens
        self.output = request.output_tokens
        self.generated = 0          # output tokens produced so far
        self.computed = 0           # tokens whose KV is in the cache
        self.state = WAITING
        self.in_decode = False      # member of the replica's lazily advanced decode set
        self.c_key = 0              # computed - G while in the decode set
        self.g_key = 0              # generated - G while in the decode set
        self.g_done = 0             # value of G at which the last token is sampled
        self.slot_g = -1            # G of the iteration whose KV slot was allocated one by one
        self.shared: list[object] | None = None  # prefix-cache entries it holds a reference on
        self.shared_blocks = 0      # of its blocks, those inside shared entries
        self.registered = 0         # leading hashed groups already offered to the prefix cache
        # Leading full prompt blocks identified by the request's prefix hashes, in groups of
        # `span` blocks (one group per hash when a hash covers whole blocks).
        per_hash = request.prefix_block_tokens
        self.hashable = min(self.prompt // block_size, len(request.prefix_hashes) * per_hash // block_size)
        self.span = per_hash // block_size if per_hash % block_size == 0 else 1
        self.groups = -(-self.hashable // self.span)
        self.first_hit = -1         # prompt tokens served from the prefix cache at first admission
        self.scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.last_token_s = 0.0
        self.preemptions = 0
        self.replica = -1           # replica (or prefill replica) that served it
        self.decode_replica = -1    # decode replica under disaggregation
        self.handoff = False        # leave the replica after the first token (disaggregated prefill)
        self.swapped = False        # KV swapped out to host memory (priority policy)
        self.chunk = 0              # prompt tokens scheduled in the iteration being built
        self.fixed = 0              # blocks held beyond ceil(computed / block size) (KvLayout)

    def __repr__(self) -> str:
        return f"Sequence({self.request.request_id!r}, computed={self.computed}, generated={self.generated})"
