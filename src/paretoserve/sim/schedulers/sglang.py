"""`sglang`: SGLang's scheduler (`Scheduler.get_next_batch_to_run`, `PrefillAdder`), FCFS.

Sources: sglang `python/sglang/srt/managers/scheduler.py`, `schedule_policy.py`, `schedule_batch.py`,
`server_args.py`, `global_config.py` (read at v0.5.1.post1 and v0.5.8.post1);
`../shared/reference/engine_facts.md` §4.

- KV pages of one token (`page_size` 1: `block_size` = 1); the radix cache is the simulator's prefix
  cache (`prefix_caching` on = radix cache on).
- Ordering: a prefill batch runs first whenever one can be formed and pauses the decodes; otherwise
  the running batch decodes. With `mixed_chunk` (`--enable-mixed-chunk`) the decodes join the
  prefill batch instead, and take `running` tokens off both prefill budgets.
- A prefill batch: the partial (chunked) request first, then waiting requests in order while
  `max_prefill_tokens` (input tokens of the batch; a request that does not fit it is still taken
  first), `chunked_prefill_size` (the last request is cut to it) and the KV estimate allow.
- KV estimate (`schedule_conservativeness` c): new_token_ratio starts at min(0.7 c, 1), falls by
  (init − 0.14 init) / 600 per decode iteration to 0.14 init, and resets when the engine is idle.
  A request is admitted while its input + min(max_new_tokens, 4096) is below the free KV tokens
  minus, for every decoding request, min(its remaining output, 4096) × new_token_ratio, minus what
  this batch took. With the radix cache off and `ignore_eos` requests (how benchmarks run) SGLang
  checks instead that every request can run to its last token: ordered by remaining output, the
  free KV after the requests finishing earlier have released theirs must exceed the remaining
  outputs of the rest (`PrefillAdder.add_one_req_ignore_eos`).
- When a request does not fit (or `max_running_requests` is reached) the batch is *full*: no
  prefill is tried again until a running request finishes or is retracted.
- Retraction on KV exhaustion: decoding requests with the fewest output tokens (then the longest
  input) are retracted, recomputed later from the back of the waiting queue, until 20 free KV
  tokens per remaining request are left; new_token_ratio becomes min(1, (decoded tokens + 20 ×
  requests) / their max_new_tokens).

The request's output length stands for its `max_new_tokens`. Simplifications: the ratio decays on
every decode iteration (SGLang skips mixed ones); the prefix-cache hit checked against the budgets
is the simulator's block match.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from paretoserve.sim.schedulers.base import Scheduler
from paretoserve.sim.sequence import Sequence

if TYPE_CHECKING:
    from paretoserve.sim.config import EngineConfig
    from paretoserve.sim.replica import Replica

#: SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION: cap on one request's max_new_tokens in the KV estimate.
CLIP_MAX_NEW_TOKENS = 4096
#: global_config: init ratio per conservativeness, min ratio factor, decay iterations, retract steps.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20
#: IGNORE_EOS_RESERVE_TOKENS: KV tokens kept per request by the ignore_eos admission check.
IGNORE_EOS_RESERVE_TOKENS = 1
_MIB = 1 << 20


class SglangScheduler(Scheduler):
    """SGLang's FCFS scheduler with chunked prefill and conservative KV admission."""

    name = "sglang"
    options = {"chunked_prefill_size": 8192.0, "max_prefill_tokens": 16384.0,
               "schedule_conservativeness": 1.0, "mixed_chunk": 0.0, "ignore_eos": 0.0}
    block_size = 1

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        s = self.settings
        self.chunk = max(1, int(s["chunked_prefill_size"]))
        self.max_prefill = max(1, int(s["max_prefill_tokens"]))
        self.mixed = bool(s["mixed_chunk"])
        self.prefill_first = not self.mixed
        self.exact = bool(s["ignore_eos"]) and not config.prefix_caching
        self.max_tokens = config.max_num_batched_tokens
        self.init_ratio = min(INIT_NEW_TOKEN_RATIO * s["schedule_conservativeness"], 1.0)
        self.min_ratio = self.init_ratio * MIN_NEW_TOKEN_RATIO_FACTOR
        self.decay = (self.init_ratio - self.min_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.ratio = self.init_ratio
        self.ratio_g = 0    # decode-iteration counter G when `ratio` was set
        self.full_at = 0    # running requests when the batch became full (0: not full)

    def requeue(self, seq: Sequence) -> None:
        """A retracted request goes to the back of the waiting queue (`waiting_queue.extend`)."""
        self.waiting.append(seq)

    def new_token_ratio(self, replica: Replica) -> float:
        """The ratio of max_new_tokens the KV estimate expects running requests still to need."""
        return max(self.min_ratio, self.ratio - self.decay * (replica.G - self.ratio_g))

    def _full(self, replica: Replica) -> bool:
        if self.full_at and len(replica.running) < self.full_at:
            self.full_at = 0
        return self.full_at > 0

    def prefill_budget(self, budget: int) -> int:
        """`chunked_prefill_size`, less this iteration's decodes when they are mixed in."""
        mixed = self.max_tokens - budget if self.mixed else 0
        return max(0, min(budget, self.chunk - mixed))

    def admit(self, replica: Replica, budget: int) -> int:
        if not replica.running:  # idle: `self_check_during_idle` resets the ratio
            self.ratio, self.ratio_g = self.init_ratio, replica.G
        if self._full(replica):
            return budget
        ratio = self.new_token_ratio(replica)
        G = replica.G
        free = replica.kv.free * replica.bs        # KV tokens available and evictable
        # Estimated need of the running decodes, and of the partial prefills scheduled already.
        offset = 0.0
        states: list[tuple[int, int]] = []         # (output tokens left, tokens held): exact check
        for seq in replica.running:
            generated = seq.g_key + G if seq.in_decode else seq.generated
            left = seq.output - generated
            if seq.in_decode:
                offset += min(left, CLIP_MAX_NEW_TOKENS) * ratio
            if self.exact and left > 0:
                states.append((left, seq.prompt + generated))
        scheduled = sum(replica.pf_tokens)
        cur_offset = scheduled
        for seq, tokens in zip(replica.pf_seqs, replica.pf_tokens, strict=True):
            last = seq.computed + tokens == seq.prompt + seq.generated
            offset += tokens + (min(seq.output, CLIP_MAX_NEW_TOKENS) if last else 0)
        states.sort()
        mixed = replica.n_dec if self.mixed and not replica.pf_only else 0
        rem_input = self.max_prefill - mixed - scheduled
        rem_chunk = budget
        taken = bool(replica.pf_seqs)
        queue = self.waiting
        while queue:
            if len(replica.running) >= replica.max_seqs:
                self.full_at = len(replica.running)
                break
            seq = queue[0]
            if replica.pf_only and seq.generated and seq.computed + 1 == seq.prompt + seq.generated:
                break  # its KV arrived (disaggregated decode): it joins a decode iteration
            extend = replica.uncached_tokens(seq)
            max_new = min(seq.output, CLIP_MAX_NEW_TOKENS)
            alone = not replica.running            # guard: an idle engine takes its head request
            if self.exact:
                fits = alone or self._fits_to_completion(states, seq, extend, free - cur_offset,
                                                         free - offset)
            else:
                fits = alone or extend + max_new < free - offset
                if fits and extend >= rem_input and taken:
                    break
            if not fits:
                self.full_at = len(replica.running)
                break
            tokens = replica.try_admit(seq, rem_chunk)
            if not tokens:
                self.full_at = len(replica.running)
                break
            queue.popleft()
            taken = True
            whole = tokens >= extend
            offset += tokens + (max_new if whole else 0)
            cur_offset += tokens
            rem_input -= tokens
            rem_chunk -= tokens
            if self.exact and seq.output - seq.generated > 0:
                bisect.insort(states, (seq.output - seq.generated, seq.prompt + seq.generated))
            if free - offset <= 0 or free - cur_offset <= 0:
                self.full_at = len(replica.running)
                break
            if rem_input <= 0 or rem_chunk <= 0:
                break
        return rem_chunk

    @staticmethod
    def _fits_to_completion(states: list[tuple[int, int]], seq: Sequence, extend: int,
                            cur_rem: float, rem_total: float) -> bool:
        """`add_one_req_ignore_eos`: every request can run to its last token with `seq` added."""
        if extend > min(cur_rem, rem_total):
            return False
        left = seq.output - seq.generated
        merged = list(states)
        if left > 0:
            bisect.insort(merged, (left, seq.prompt + seq.generated))
        rem = cur_rem - extend
        freed = 0
        count = len(merged)
        for i, (tokens_left, held) in enumerate(merged):
            remaining = count - i
            if rem + freed - tokens_left * remaining <= IGNORE_EOS_RESERVE_TOKENS * remaining:
                return False
            freed += held
        return True

    def victim(self, replica: Replica) -> Sequence:
        """`retract_decode`: retract the decoding requests with the fewest output tokens (then the
        longest input) until 20 free KV tokens per remaining one; return the last to retract."""
        G = replica.G
        decoding = [s for s in replica.running if s.in_decode]
        if not decoding:
            return next(reversed(replica.running))
        # Sorted most-kept first; ties keep batch order, and the last of them goes first.
        order = sorted(decoding, key=lambda s: (s.g_key + G, -s.prompt), reverse=True)
        free = replica.kv.free * replica.bs
        victims = [order.pop()]
        free += victims[-1].c_key + G
        while len(order) > 1 and free < RETRACT_DECODE_STEPS * len(order):
            victims.append(order.pop())
            free += victims[-1].c_key + G
        kept_out = sum(s.g_key + G for s in order)
        kept_max = sum(s.output for s in order)
        self.ratio = min(1.0, (kept_out + RETRACT_DECODE_STEPS * len(order)) / kept_max) if kept_max else 1.0
        self.ratio_g = G
        for seq in victims[:-1]:
            replica.preempt(seq)
        return victims[-1]

    def arrival_interrupts(self, replica: Replica) -> bool:
        # A full batch admits nothing until a request finishes; otherwise an arrival prefills.
        return not self._full(replica)


def chunked_prefill_size(gpu_memory_bytes: float) -> int:
    """SGLang's default `chunked_prefill_size` for a GPU of this much memory
    (`ServerArgs._handle_gpu_memory_settings`, engine_facts.md §4)."""
    mib = gpu_memory_bytes / _MIB
    for limit_gib, size in ((35, 2048), (60, 4096), (160, 8192)):
        if mib < limit_gib * 1024:
            return size
    return 16384


def cuda_graph_max_bs(gpu_memory_bytes: float, tp: int) -> int:
    """SGLang's default `cuda_graph_max_bs` (engine_facts.md §4 table)."""
    mib = gpu_memory_bytes / _MIB
    for limit_gib, small, large in ((20, 8, 8), (35, 24, 80), (60, 32, 160), (160, 256, 512)):
        if mib < limit_gib * 1024:
            return small if tp < 4 else large
    return 512


def mem_fraction_static(gpu_memory_bytes: float, tp: int, pp: int = 1, version: str = "") -> float:
    """SGLang's default `mem_fraction_static` = (GPU memory − reserved) / GPU memory: the share of
    memory for weights + KV pool (activations and CUDA graphs live in the rest).

    Releases up to 0.5.1: reserved = 9.5 + tp × pp / 2 GiB on 35–90 GiB GPUs, 12 + tp × pp / 2 below
    160 GiB, 32 GiB above, 2.8 + tp × pp / 10 below 35 GiB (sglang v0.5.1.post1 server_args.py).
    Later ones (engine_facts.md §4, read at v0.5.8.post1): reserved = 512 MiB + 1.5 ×
    max(chunked_prefill_size, 2048) + 2 × cuda_graph_max_bs + tp × pp / 8 GiB, at least 10 GiB on
    GPUs above 60 GiB.
    """
    mib = gpu_memory_bytes / _MIB
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    if parts and tuple(parts) <= (0, 5, 1):
        gib = (2.8 + tp * pp / 10 if mib < 35 * 1024 else 9.5 + tp * pp / 2 if mib < 90 * 1024
               else 12 + tp * pp / 2 if mib < 160 * 1024 else 32.0)
        reserved = gib * 1024
    else:
        reserved = (512 + 1.5 * max(chunked_prefill_size(gpu_memory_bytes), 2048)
                    + 2 * cuda_graph_max_bs(gpu_memory_bytes, tp) + tp * pp / 8 * 1024)
        if mib > 60 * 1024:
            reserved = max(reserved, 10 * 1024)
    return round((mib - reserved) / mib, 3)
