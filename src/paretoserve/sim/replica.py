"""`Replica`: one engine instance on tp × pp devices, iterating like vLLM V1's engine core.

Each iteration (`start` … `finish`):

1. every sequence in the decode set gets one token and, when its last block is full, a new KV block;
   when none is free the policy's victim (vLLM: the newest running request) is preempted;
2. requests part-way through their prompt continue with the remaining token budget;
3. unless something was preempted, the policy admits waiting requests (chunked prefill, prefix-cache
   hits skip the cached blocks);
   a `prefill_first` policy (SGLang without mixed chunks) first tries steps 2–3 alone: when they
   schedule any prefill the iteration is prefill-only and the decode set waits (it gains no token);
4. the duration comes only from the `StepTimeModel`; at the end, finished prefills sample a token,
   requests that reached their output length complete and free their blocks.

Fast path (DESIGN §4): a decode-only batch that the policy would keep choosing is advanced k
iterations at once, with k bounded by the next completion, the first KV block allocation that would
fail, and (when it could change the batch) the first iteration boundary at or after the next
arrival; its time is `decode_run_seconds(n, context_sum, k)`. Decode-set bookkeeping is O(1) per
run: a sequence stores its offsets from the decode-iteration counter G, and a histogram of those
offsets modulo the block size says how many sequences need a new block at any later iteration.
With `fast=False` every iteration is taken one at a time (the reference the fast path is tested
against). The fast path assumes an iteration never gets shorter as contexts grow.

ITL: every iteration adds one gap per decoding sequence equal to its duration (a fast-forwarded run
of k iterations adds its mean iteration time k times per sequence; iterations of one run differ
only by the growth of the contexts); a sequence that resumes after preemption or a KV transfer adds
its own gap since its previous token. Prefill-only iterations add their time to the next gap of the
sequences that were decoding before them (a sequence whose first token came from one of them is
given the plain iteration gap: an approximation).

Speculative decoding (`config.speculative`): every step draws the tokens each decoding sequence
emits, accepted + 1 (`paretoserve.perf.speculative.AcceptanceSampler`, seeded per replica; every
sequence of one step accepts the same number, so the decode set still advances together), and the
decode-token counter G advances by that many. The step allocates KV blocks for those tokens
(preempting while they do not fit), counts K + 1 tokens per decoding sequence against the token
budget, and takes its time from `SpecDecoder.seconds` (verify K + 1 wide, K drafter forwards).
A sequence that needs fewer tokens to finish emits only those (its KV for the rest is released
with it). ITL follows the client convention (`paretoserve.bench.client`): a step of d seconds that
emits r tokens to a sequence adds r gaps of d / r. The fast path is off: each step is taken alone.

With pipeline stages (pp > 1) a replica is a `paretoserve.sim.pipeline.PipelineReplica` of pp
lanes, each a `Replica` sharing one block manager and waiting queue (`lane=True`, no fast path).

Units: seconds, tokens, blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush

from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.sim.config import EngineConfig
from paretoserve.sim.iteration import IterationRow
from paretoserve.sim.kvcache import BlockManager
from paretoserve.sim.schedulers import make_scheduler
from paretoserve.sim.schedulers.base import Scheduler
from paretoserve.sim.sequence import DONE, RUNNING, WAITING, Sequence

INF = float("inf")


class Replica:
    """One engine instance; driven by the event loop through `arrive`, `start`, `finish`, `shorten`.

    Args:
        index: replica number in its cluster (reported in records).
        config: engine settings and latency model.
        fast: fast-forward uneventful decode runs (False: one iteration at a time).
        on_done: called with each sequence that produced its last token.
        on_itl: called with (gap seconds, count) for inter-token gaps.
        on_handoff: called with (sequence, time) when a disaggregated prefill produced its first
            token and the sequence leaves for a decode replica.
        on_iteration: called with an `IterationRow` per step (a fast-forwarded run is one row).
        kv, scheduler, max_seqs: a block manager, waiting queue and sequence cap shared with other
            lanes of one pipeline-parallel engine (see `paretoserve.sim.pipeline`); by default the
            replica's own, from `config`.
        lane: a pipeline lane, which may find nothing to run while other lanes hold the KV blocks.
    """

    __slots__ = (
        "index", "config", "model", "bs", "kv", "layout", "scheduler", "max_seqs", "max_tokens",
        "whole_prompts", "reserve_full", "swap_s_per_token", "fast",
        "on_done", "on_itl", "on_handoff", "on_iteration",
        "running", "prefilling", "G", "n_dec", "key_sum", "hist", "done_heap",
        "now", "end", "k", "n_step", "cs_step", "horizon", "swap_s", "preempted_now", "all_slots",
        "unsteady", "pf_only", "stall_s", "stall_n", "lane",
        "pf_seqs", "pf_tokens", "joiners", "outstanding", "version",
        "busy_s", "iterations", "steps", "preemptions", "spec", "accept", "adv", "width",
    )

    def __init__(self, index: int, config: EngineConfig, *, fast: bool = True,
                 on_done: Callable[[Sequence], None],
                 on_itl: Callable[[float, int], None],
                 on_handoff: Callable[[Sequence, float], None] | None = None,
                 on_iteration: Callable[[IterationRow], None] | None = None,
                 kv: BlockManager | None = None, scheduler: Scheduler | None = None,
                 max_seqs: int | None = None, lane: bool = False) -> None:
        self.index = index
        self.config = config
        self.model = config.step_model
        self.bs = config.block_size
        self.kv = kv if kv is not None else BlockManager(
            config.num_blocks, config.block_size, prefix_caching=config.prefix_caching,
            watermark=config.watermark)
        self.layout = config.kv_layout
        self.scheduler = scheduler if scheduler is not None else make_scheduler(config)
        self.max_seqs = max_seqs or config.max_num_seqs
        self.lane = lane
        self.max_tokens = config.max_num_batched_tokens
        self.whole_prompts = self.scheduler.whole_prompts
        self.reserve_full = config.reserve_full_prompt
        self.swap_s_per_token = (config.kv_bytes_per_token / config.swap_bandwidth
                                 if config.swap_bandwidth > 0 else 0.0)
        self.fast = fast
        self.on_done = on_done
        self.on_itl = on_itl
        self.on_handoff = on_handoff
        self.on_iteration = on_iteration
        self.running: dict[Sequence, None] = {}   # admission order (newest last)
        self.prefilling: list[Sequence] = []      # running sequences with prompt tokens left
        # Decode set: computed = c_key + G, generated = g_key + G for each member.
        self.G = 0
        self.n_dec = 0
        self.key_sum = 0
        self.hist = [0] * self.bs                 # members by c_key mod block size
        self.done_heap: list[tuple[int, int, Sequence]] = []  # (G at last token, uid, sequence)
        # The step in flight.
        self.now = 0.0
        self.end = INF
        self.k = 0
        self.n_step = 0
        self.cs_step = 0
        self.horizon = INF
        self.swap_s = 0.0
        self.preempted_now = False
        self.all_slots = -1
        self.unsteady = False
        self.pf_only = False                      # the step in flight prefills alone (decodes wait)
        self.stall_s = 0.0                        # prefill-only seconds since the decode set last advanced
        self.stall_n = 0                          # decode-set members when that stall began
        self.pf_seqs: list[Sequence] = []
        self.pf_tokens: list[int] = []
        self.joiners: list[Sequence] = []
        self.outstanding = 0
        self.version = 0
        self.busy_s = 0.0
        self.iterations = 0
        self.steps = 0
        self.preemptions = 0
        self.spec = config.speculative
        self.accept = self.spec.sampler(index) if self.spec is not None else None
        self.adv = 1                              # tokens each decoding sequence gains this step
        self.width = self.spec.width if self.spec is not None else 1  # query tokens per decode

    # ------------------------------------------------------------------ inputs
    def idle(self, t: float) -> bool:
        """Whether an arrival at `t` should start a step now (no step or wake-up is pending)."""
        return self.end == INF

    def arrive(self, seq: Sequence) -> None:
        """Queue a request that has arrived (it is considered at the next iteration boundary)."""
        self.scheduler.add(seq, self.now)

    # ------------------------------------------------------------------ one step
    def start(self, now: float, horizon: float = INF) -> float:
        """Schedule the step starting at `now`; returns when it ends (inf when there is no work).

        `horizon` is the next time a request may arrive here; a fast-forwarded run stops at the
        first iteration boundary at or after it when an arrival could change the batch.
        """
        self.now = now
        self.preempted_now = False
        self.unsteady = False
        self.swap_s = 0.0
        self.all_slots = -1
        kv = self.kv
        sched = self.scheduler
        budget = self.max_tokens
        self.pf_only = False
        if self.accept is not None:
            self.adv = self.accept.draw()
        if sched.prefill_first and (self.prefilling or len(sched)):
            self.pf_only = True  # admission sees a prefill-only iteration being built
            self._prefill(budget)
            self.pf_only = bool(self.pf_seqs)
        if not self.pf_only:
            n = self.n_dec
            if n and self.spec is not None:
                self._allocate_ahead()
                budget -= self.n_dec * self.width
            elif n:
                need = self.hist[-self.G % self.bs]
                if need <= kv.free:
                    if need:
                        kv.take(need)
                    self.all_slots = self.G
                else:
                    self._allocate_slots_one_by_one()
                budget -= self.n_dec
            self._prefill(budget)
        n = 0 if self.pf_only else self.n_dec
        if not n and not self.pf_seqs:
            self.end = INF
            self.k = 0
            if self.preempted_now:
                return self.start(now, horizon)  # preemption blocked admission: admit at once
            if (self.running or len(sched)) and not self.lane:
                raise RuntimeError(f"replica {self.index} stalled at t={now:.6f}s with "
                                   f"{len(self.running)} running and {len(sched)} waiting")
            return INF
        cs = self.key_sum + n * (self.G + 1)  # Σ (context + 1) over decoding sequences
        model = self.model
        k = 1
        if self.spec is not None:
            chunks = tuple(PrefillChunk(t, s.computed, s.computed + t == s.prompt + s.generated)
                           for s, t in zip(self.pf_seqs, self.pf_tokens, strict=True))
            d = self.spec.seconds(chunks, self._contexts(n, cs) if n else ())
        elif self.pf_seqs:
            chunks = tuple(PrefillChunk(t, s.computed, s.computed + t == s.prompt + s.generated)
                           for s, t in zip(self.pf_seqs, self.pf_tokens, strict=True))
            d = model.seconds(StepShape(chunks, self._contexts(n, cs) if n else ()))
        elif self.fast and not self.preempted_now and not self.joiners:
            k, d = self._decode_run(now, n, cs, horizon)
        else:
            d = model.decode_seconds(n, cs)
        self.k = k
        self.n_step = n
        self.cs_step = cs
        self.horizon = horizon
        self.end = now + d + self.swap_s
        return self.end

    def finish(self) -> None:
        """Apply the step that ends at `self.end`: sample tokens, complete and hand off requests."""
        t = self.end
        k = self.k
        n = self.n_step
        if k > 1:
            need = self._blocks_needed(self.G + 1, k - 1)
            if need:
                self.kv.take(need)
        duration = t - self.now
        g_before = self.G
        G = self.G = self.G + (0 if self.pf_only else k * self.adv)
        self.busy_s += duration
        self.iterations += k
        self.steps += 1
        joiners = self.joiners
        if self.pf_only:
            if self.n_dec:
                self.stall_n = self.stall_n or self.n_dec
                self.stall_s += duration
        elif n and self.spec is not None:
            self._spec_itl(t, duration, n, g_before)
        elif n:
            regular = n - len(joiners)
            stalled = min(self.stall_n, regular)
            if stalled:
                self.on_itl(duration / k + self.stall_s, stalled)
            if regular * k > stalled:
                self.on_itl(duration / k, regular * k - stalled)
            if joiners:
                for seq in joiners:
                    self.on_itl(t - seq.last_token_s, 1)
                joiners.clear()
        if not self.pf_only:
            self.stall_s = 0.0
            self.stall_n = 0
        if self.on_iteration is not None:
            self._report(t, n)
        pf_seqs = self.pf_seqs
        if pf_seqs:
            kv = self.kv
            for seq, tokens in zip(pf_seqs, self.pf_tokens, strict=True):
                c = seq.computed = seq.computed + tokens
                seq.chunk = 0
                if seq.registered < seq.groups and kv.prefix_caching:
                    kv.register(seq, c)
                if c == seq.prompt + seq.generated:
                    self.prefilling.remove(seq)
                    self._sample_after_prefill(seq, t)
            pf_seqs.clear()
            self.pf_tokens.clear()
        heap = self.done_heap
        while heap and heap[0][0] <= G:
            g_done, _, seq = heappop(heap)
            if seq.in_decode and seq.g_done == g_done:
                c = seq.c_key + G
                self._leave_decode(seq)
                seq.computed = c
                seq.generated = seq.output
                self._complete(seq, t)
        self.now = t
        self.end = INF
        self.k = 0

    def shorten(self, t: float) -> bool:
        """A request arrived at `t` during a fast-forwarded run: end the run at the first boundary
        at or after `t`. Returns True when the end time changed."""
        if self.k <= 1 or self.horizon <= t:
            return False
        self.horizon = t
        k, d = self._first_boundary(self.now, self.n_step, self.cs_step, t, self.k)
        if k == self.k:
            return False
        self.k = k
        self.end = self.now + d
        return True

    # ------------------------------------------------------------------ admission and preemption
    def try_admit(self, seq: Sequence, budget: int) -> int:
        """Admit waiting `seq` with up to `budget` tokens if its KV blocks fit; returns the tokens
        scheduled for it this iteration (0: it does not fit, nothing changed)."""
        kv = self.kv
        bs = self.bs
        num_tokens = seq.prompt + seq.generated
        computed = seq.computed
        keys, base, evictable_hits = self._cache_lookup(seq)
        if base:
            computed = base * bs
        remaining = num_tokens - computed
        if self.whole_prompts:
            if remaining > budget and (remaining <= self.max_tokens or self.pf_seqs):
                return 0
            tokens = remaining
        else:
            tokens = remaining if remaining < budget else budget
        # Sliding-window KV and recurrent state: reserved at admission for the sequence's longest
        # context (prompt + output), as `KvCapacity.max_sequences` counts them.
        fixed = self.layout.fixed_blocks(seq.prompt + seq.output) if self.layout else 0
        joins = remaining == 1 and seq.generated > 0  # its KV is all here: it decodes at once
        need = (computed + (self.adv if joins else tokens) + bs - 1) // bs - base + fixed
        check = (num_tokens + bs - 1) // bs - base + fixed if self.reserve_full else need
        if check + evictable_hits + kv.watermark_blocks > kv.free:
            # Evicting an entry it would use only in part could let it in during a decode run.
            self.unsteady = self.unsteady or evictable_hits > 0
            return 0
        if keys:
            kv.acquire(keys)
            seq.shared = keys
            seq.shared_blocks = base
            seq.registered = min(len(keys), seq.groups)
        if need:
            kv.take(need)
        seq.fixed = fixed
        if seq.first_hit < 0:
            seq.first_hit = computed
        seq.computed = computed
        if seq.swapped:
            self.swap_s += computed * self.swap_s_per_token
            seq.swapped = False
        if seq.scheduled_s is None:
            seq.scheduled_s = self.now
        seq.state = RUNNING
        self.running[seq] = None
        if joins:
            # Its KV is all here (transferred or swapped in): it decodes in this very iteration.
            seq.slot_g = self.G
            self._join_decode(seq, computed, seq.generated)
            self.joiners.append(seq)
        else:
            self.prefilling.append(seq)
            seq.chunk = tokens
            self.pf_seqs.append(seq)
            self.pf_tokens.append(tokens)
        return tokens

    def uncached_tokens(self, seq: Sequence) -> int:
        """Tokens waiting `seq` would compute if admitted now (its prefix-cache hit left out)."""
        base = self._cache_lookup(seq)[1]
        return seq.prompt + seq.generated - (base * self.bs if base else seq.computed)

    def _cache_lookup(self, seq: Sequence) -> tuple[list[object] | None, int, int]:
        """(entry keys, blocks hit, of them evictable now) of waiting `seq` in the prefix cache;
        (None, 0, 0) when it does not look (it has KV already, or nothing hashable)."""
        kv = self.kv
        if seq.computed == 0 and kv.prefix_caching and (seq.hashable or seq.preemptions):
            return kv.match(seq, (seq.prompt + seq.generated - 1) // self.bs)
        return None, 0, 0

    def preempt(self, seq: Sequence) -> int:
        """Preempt running `seq` (swap out or recompute, per the policy) and requeue it.

        Returns the tokens it had been given in the iteration being scheduled (budget to reuse).
        """
        bs = self.bs
        G = self.G
        freed = 0
        if seq.in_decode:
            c = seq.c_key + G
            seq.computed = c
            seq.generated = seq.g_key + G
            slot = self.all_slots == G or seq.slot_g == G
            blocks = (c + (self.adv if slot else 0) + bs - 1) // bs
            freed = self.width if slot else 0
            self._leave_decode(seq)
            if seq.slot_g == G and seq in self.joiners:
                self.joiners.remove(seq)
            else:
                seq.last_token_s = self.now
        else:
            chunk = seq.chunk
            blocks = (seq.computed + chunk + bs - 1) // bs
            if chunk:
                i = self.pf_seqs.index(seq)
                del self.pf_seqs[i]
                del self.pf_tokens[i]
                seq.chunk = 0
                freed = chunk
            self.prefilling.remove(seq)
        del self.running[seq]
        blocks += seq.fixed
        seq.fixed = 0
        if self.scheduler.swap:
            self.kv.release(seq, blocks, park=False)
            self.swap_s += seq.computed * self.swap_s_per_token
            seq.swapped = True
        else:
            self.kv.release(seq, blocks, park=True)
            seq.computed = 0
        seq.state = WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.preempted_now = True
        self.scheduler.requeue(seq)
        return freed

    # ------------------------------------------------------------------ internals
    def _prefill(self, budget: int) -> None:
        """Steps 2–3 with `budget` tokens left: continue partial prefills, then admit."""
        sched = self.scheduler
        budget = sched.prefill_budget(budget)
        if self.prefilling and budget > 0:
            budget = self._continue_prefills(budget)
        if not self.preempted_now and budget > 0 and len(sched):
            sched.admit(self, budget)

    def _allocate_slots_one_by_one(self) -> None:
        """Not enough blocks for every decode: allocate in admission order, preempting victims."""
        G, bs, kv, sched = self.G, self.bs, self.kv, self.scheduler
        for seq in list(self.running):
            if not seq.in_decode or (seq.c_key + G) % bs:
                continue
            while kv.free < 1 and seq.in_decode:
                self.preempt(sched.victim(self))
            if seq.in_decode:
                kv.take(1)
                seq.slot_g = G

    def _allocate_ahead(self) -> None:
        """Speculation: blocks for the `adv` tokens every decoding sequence gains this step (counter
        values G … G + adv − 1), preempting the policy's victims until they fit."""
        kv, sched = self.kv, self.scheduler
        need = self._blocks_needed(self.G, self.adv)
        while need > kv.free and self.n_dec:
            self.preempt(sched.victim(self))
            need = self._blocks_needed(self.G, self.adv)
        if need:
            kv.take(need)
        self.all_slots = self.G

    def _spec_itl(self, t: float, duration: float, n: int, g_before: int) -> None:
        """Speculation: the gaps of one step (module docstring). A sequence that finishes in it
        emits only the tokens it still needed; a joiner's gap runs from its previous token."""
        a = self.adv
        joiners = self.joiners
        short = [g - g_before for g, _, seq in self.done_heap
                 if g - g_before < a and seq.in_decode and seq.g_done == g and seq not in joiners]
        full = n - len(joiners) - len(short)
        stalled = min(self.stall_n, full)
        if stalled:
            self.on_itl((duration + self.stall_s) / a, stalled * a)
        if full > stalled:
            self.on_itl(duration / a, (full - stalled) * a)
        for r in short:
            self.on_itl(duration / r, r)
        for seq in joiners:
            r = min(a, seq.g_done - g_before)
            self.on_itl((t - seq.last_token_s) / r, r)
        joiners.clear()

    def _continue_prefills(self, budget: int) -> int:
        """Give running partial prefills their next chunk (in admission order)."""
        kv, bs, sched = self.kv, self.bs, self.scheduler
        for seq in list(self.prefilling):
            if budget <= 0:
                break
            if seq.state != RUNNING:
                continue
            c = seq.computed
            remaining = seq.prompt + seq.generated - c
            tokens = remaining if remaining < budget else budget
            need = (c + tokens + bs - 1) // bs - (c + bs - 1) // bs
            while need > kv.free and seq.state == RUNNING:
                budget += self.preempt(sched.victim(self))
            if seq.state != RUNNING:
                continue
            if need:
                kv.take(need)
            seq.chunk = tokens
            self.pf_seqs.append(seq)
            self.pf_tokens.append(tokens)
            budget -= tokens
        return budget

    def _sample_after_prefill(self, seq: Sequence, t: float) -> None:
        """`seq` computed all its tokens at `t`: it samples one and completes, leaves or decodes.

        A disaggregated prefill hands the sequence off instead; its first token reaches the user
        with the KV transfer (`on_handoff`).
        """
        seq.generated += 1
        if seq.handoff and seq.generated < seq.output:
            self._release(seq)
            seq.state = WAITING
            seq.handoff = False
            assert self.on_handoff is not None
            self.on_handoff(seq, t)
            return
        if seq.first_token_s is None:
            seq.first_token_s = t
        else:
            self.on_itl(t - seq.last_token_s, 1)
        seq.last_token_s = t
        if seq.generated >= seq.output:
            self._complete(seq, t)
        else:
            self._join_decode(seq, seq.computed, seq.generated)

    def _complete(self, seq: Sequence, t: float) -> None:
        self._release(seq)
        seq.state = DONE
        seq.last_token_s = t
        self.on_done(seq)

    def _release(self, seq: Sequence) -> None:
        """Free a departing sequence's blocks (ceil(computed / block size) plus its fixed ones)."""
        self.kv.release(seq, (seq.computed + self.bs - 1) // self.bs + seq.fixed, park=False)
        seq.fixed = 0
        del self.running[seq]
        self.outstanding -= 1

    def _join_decode(self, seq: Sequence, computed: int, generated: int) -> None:
        G = self.G
        key = computed - G
        seq.in_decode = True
        seq.c_key = key
        seq.g_key = generated - G
        seq.g_done = seq.output - seq.g_key
        self.n_dec += 1
        self.key_sum += key
        self.hist[key % self.bs] += 1
        heappush(self.done_heap, (seq.g_done, seq.uid, seq))

    def _leave_decode(self, seq: Sequence) -> None:
        seq.in_decode = False
        self.n_dec -= 1
        self.key_sum -= seq.c_key
        self.hist[seq.c_key % self.bs] -= 1

    def _contexts(self, n: int, cs: int) -> tuple[int, ...]:
        """Decode contexts (context + 1 each) for a step shape: exact in reference mode, the same
        sum spread evenly in fast mode (what `decode_seconds` assumes too)."""
        if not self.fast:
            G1 = self.G + 1
            return tuple(s.c_key + G1 for s in self.running if s.in_decode)
        mean, extra = divmod(cs, n)
        return (mean + 1,) * extra + (mean,) * (n - extra)

    def _decode_run(self, now: float, n: int, cs: int, horizon: float) -> tuple[int, float]:
        """Iterations to fast-forward from `now` and their total seconds."""
        heap = self.done_heap
        while not (heap[0][2].in_decode and heap[0][2].g_done == heap[0][0]):
            heappop(heap)
        k_max = heap[0][0] - self.G
        if k_max > 1:
            k_max = 1 + self._kv_iterations(self.G + 1, self.kv.free, k_max - 1)
        sched = self.scheduler
        if k_max > 1 and not self.unsteady and sched.run_stable(self):
            if horizon < INF and sched.arrival_interrupts(self):
                return self._first_boundary(now, n, cs, horizon, k_max)
            return k_max, self.model.decode_run_seconds(n, cs, k_max)
        return 1, self.model.decode_seconds(n, cs)

    def _first_boundary(self, now: float, n: int, cs: int, horizon: float,
                        k_max: int) -> tuple[int, float]:
        """Smallest k <= k_max whose run ends at or after `horizon` (else k_max), and its seconds.

        Iterations never get shorter as contexts grow (assumed of every step-time model), so
        k <= hi = ceil(target / first iteration), and run(hi) - first < target proves k == hi:
        usually one k-iteration sum suffices.
        """
        model = self.model
        target = horizon - now
        d0 = model.decode_seconds(n, cs)
        if d0 >= target or k_max == 1:
            return 1, d0
        hi = min(k_max, -int(-target // d0))
        if hi <= 4:  # step through a few iterations: cheaper than a closed-form sum
            run, k = d0, 1
            while k < hi:
                run += model.decode_seconds(n, cs + k * n)
                k += 1
                if run >= target:
                    break
            return k, run
        run_hi = model.decode_run_seconds(n, cs, hi)
        if run_hi < target or run_hi - d0 < target:  # k_max reached, or run(hi - 1) < target
            return hi, run_hi
        lo = 1  # rare: contexts grew enough for the run to reach the horizon earlier
        while hi - lo > 1:
            mid = (lo + hi) // 2
            run = model.decode_run_seconds(n, cs, mid)
            if run >= target:
                hi, run_hi = mid, run
            else:
                lo = mid
        return hi, run_hi

    def _kv_iterations(self, g: int, free: int, k_max: int) -> int:
        """Decode iterations (at most `k_max`) from counter value `g` whose new blocks fit in `free`."""
        n, hist, bs = self.n_dec, self.hist, self.bs
        if n * ((k_max - 1) // bs + 1) <= free:  # even a block per sequence per `bs` iterations fits
            return k_max
        q, rem = divmod(free, n)
        s = 0
        while s < bs:
            c = hist[-(g + s) % bs]
            if c > rem:
                break
            rem -= c
            s += 1
        return min(k_max, q * bs + s)

    def _blocks_needed(self, g: int, m: int) -> int:
        """New blocks the decode set needs over `m` iterations from counter value `g`.

        Iteration g + j needs a block for the members with c_key = -(g + j) mod block size, so the
        last `m mod bs` iterations cover the histogram slice ending at index -g mod bs.
        """
        hist, bs = self.hist, self.bs
        q, s = divmod(m, bs)
        total = q * self.n_dec
        if s:
            top = -g % bs + 1
            low = top - s
            total += sum(hist[low:top]) if low >= 0 else sum(hist[:top]) + sum(hist[low:])
        return total

    def _report(self, t: float, n: int) -> None:
        assert self.on_iteration is not None
        self.on_iteration(IterationRow(
            replica=self.index, start_s=self.now, duration_s=t - self.now, iterations=self.k,
            decode_seqs=n, prefill_seqs=len(self.pf_seqs), prefill_tokens=sum(self.pf_tokens),
            kv_used=self.kv.used / self.kv.num_blocks, waiting=len(self.scheduler),
            running=len(self.running), preemptions=self.preemptions))
