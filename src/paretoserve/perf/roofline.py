"""`Roofline`: step time from datasheet peaks × efficiencies (DESIGN §2).

Each operator of each layer kind knows its FLOPs and bytes as linear functions of a few
aggregates of the step (tokens, sampled rows, attention pairs, KV tokens read, ...). Its time is

    fixed + max(FLOPs / (peak × compute efficiency), bytes / (bandwidth × memory efficiency))

summed over the layers it appears in, plus pipeline send/recv from the link model and the
all-reduces of `paretoserve.perf.comm` (algorithm and link as vLLM picks them; their time depends on
the step's token count only, so it is a per-step constant of the decode fast path). Which
all-reduces run follows the layout (`AllReduce`, `allreduces_of`).
Token counts up to the largest CUDA-graph capture size are padded to the next captured size for
the linear layers and all-reduces, as vLLM V1 runs them. Routed experts follow the parallel layout
(`paretoserve.perf.layout`): the busiest EP rank's grouped GEMM (`paretoserve.perf.grouped_gemm`,
with the expected routing imbalance of `paretoserve.perf.routing`) on the tokens of all
attention-DP ranks — the step of one rank prices the MoE on attention_dp × its own tokens, as if
every rank ran the same batch (an approximation of the lock-step of real attention-DP) — and the
dispatch / combine all-to-all of `paretoserve.perf.alltoall` when attention-DP ranks exchange
tokens; these MoE aggregates depend only on the step's token count. Because every operator is
linear in the aggregates and those are constant over a decode run, a run of k decode iterations
(context +1 per sequence each time) is a sum of maxima of two lines and has a closed form, which
`decode_run_seconds` uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes, normalize_dtype
from paretoserve.catalog.model import LayerSpec, ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf import alltoall, comm
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.fitted import table_dtype
from paretoserve.perf.grouped_gemm import constants_for
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.mla import mla_ops
from paretoserve.perf.overhead import STEP_OVERHEAD_S, cudagraph_tokens
from paretoserve.perf.pipeline import slowest_stage_share
from paretoserve.perf.shape import Bound, OpTime, StepShape, StepTime

# Aggregate indices: what each operator's FLOPs and bytes are linear in.
TOKENS = 0         # tokens through the linear layers
SAMPLED = 1        # rows that need the LM head
SEQS = 2           # sequences in the batch (recurrent state reads/writes)
PF_PAIRS = 3       # prefill (query, key) pairs, full-attention layers
PF_KV = 4          # KV tokens read by prefill chunks, full-attention layers
DEC_KV = 5         # KV tokens read by decodes, full-attention layers
PF_PAIRS_W = 6     # the same three for sliding-window layers (capped at the window)
PF_KV_W = 7
DEC_KV_W = 8
EXPERTS = 9        # distinct routed experts touched on the busiest EP rank (per MoE layer)
PF_TOKENS = 10     # prompt tokens computed (prefill part of TOKENS)
DECODES = 11       # decoding sequences (decode part of TOKENS)
MOE_SEL = 12       # (token, expert) selections computed on the busiest EP rank (per MoE layer)
MOE_IN = 13        # selections entering each rank's MoE layer (all attention-DP ranks' tokens × top-k)
A2A_LL = 14        # tokens this attention-DP rank dispatches with low-latency kernels (decode-only steps)
A2A_NORMAL = 15    # the same with normal kernels (steps with prompt tokens); each GPU sends tokens / tp
N_AGG = 16
_MLA_AGG = {"tokens": TOKENS, "pf_tokens": PF_TOKENS, "pf_kv": PF_KV, "pf_pairs": PF_PAIRS,
            "decodes": DECODES, "dec_kv": DEC_KV}  # perf/mla.py aggregate names


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of datasheet peaks reached in practice, and fixed costs.

    Defaults: GEMM 70% of peak tensor FLOP/s and memory 80% of peak bandwidth (the correction NVIDIA's
    AIConfigurator applies to H100 HBM), attention 60% of peak (FlashAttention-2/3 forward passes
    reach ~50–75% of peak on A100/H100), links 80% (pipeline send/recv; all-reduces use the fitted
    constants of `perf.comm`); 3 µs fixed latency per kernel (AIConfigurator's
    `mem_empirical_constant_latency`).

    `step_overhead_s`: CPU time per iteration not hidden behind the GPU (scheduling, input
    preparation, sampling, detokenization hand-off), STEP_OVERHEAD_S by default (its source there).
    `cudagraph_max_tokens`: the largest CUDA-graph capture size; steps of at most that many tokens
    run padded to the next size of vLLM's capture list [1, 2, 4, 8, 16, ..., 248, 256, 272, ...]
    (engine_facts.md §3 "CUDA graphs": min(max_num_seqs × 2, 512), 512 for the default
    max_num_seqs 256 and 1024); 0 turns padding off.
    """

    gemm: float = 0.70
    attention: float = 0.60
    memory: float = 0.80
    link: float = 0.80
    kernel_latency_s: float = 3e-6
    step_overhead_s: float = STEP_OVERHEAD_S
    cudagraph_max_tokens: int = 512


@dataclass(frozen=True, slots=True)
class AllReduce:
    """All-reduces of one kind in a step: `blocks` calls over `gpus` GPUs, each reducing
    `token_scale` × (the rank's step tokens) × hidden activations."""

    blocks: int
    gpus: int
    token_scale: float = 1.0


def allreduces_of(model: ModelSpec, layout: ParallelLayout) -> tuple[AllReduce, ...]:
    """The all-reduces of one step of one attention-DP rank of `layout`, as vLLM runs them
    (engine_facts §3 "Data parallel + expert parallel"; vllm `FusedMoE`: the DP dispatch / combine,
    then `tensor_model_parallel_all_reduce` over the attention TP group):

    - after every attention block and every dense MLP block: one over the attention TP (tp > 1);
    - after every MoE block without attention-DP: one over the tp GPUs, which hold every token and
      whose partial sums (experts split moe_tp × EP = tp, shared experts TP-sharded) it adds up;
    - after every MoE block with attention-DP: the DP ranks' partial sums are combined first — by the
      EP all-to-all when EP > 1 (priced by `perf.alltoall`; with moe_tp > 1 the moe_tp shards of each
      expert then reduce the rank's received selections, adp × top-k ÷ EP per token, over moe_tp
      GPUs), else (experts TP-sharded over all tp × DP GPUs) by the all-gather of every rank's tokens
      and the reduce-scatter of their outputs over the DP ranks, priced as one all-reduce of
      DP × tokens over DP GPUs (a ring all-reduce is a reduce-scatter plus an all-gather of the
      same buffer); then one over the attention TP (tp > 1) adds the partial sums of the rank's tp
      GPUs.
    """
    tp, adp, ep, moe_tp = layout.tp, layout.attention_dp, layout.ep, layout.moe_tp_ways
    blocks: dict[tuple[int, float], int] = {}

    def add(count: int, gpus: int, scale: float = 1.0) -> None:
        if gpus > 1 and count:
            blocks[(gpus, scale)] = blocks.get((gpus, scale), 0) + count

    for layer, count in model.layer_groups:
        mlp = layer.mlp
        add(count * ((layer.attention.kind != "none") + (mlp.kind == "dense")), tp)
        if mlp.kind != "moe":
            continue
        add(count, tp)
        if adp > 1 and ep > 1:
            add(count, moe_tp, adp * mlp.top_k / ep)
        elif adp > 1:
            add(count, adp, float(adp))
    return tuple(AllReduce(n, gpus, scale) for (gpus, scale), n in blocks.items())


@dataclass(frozen=True, slots=True)
class _Op:
    """One operator kind: time = layers × (fixed + max(flops/peak, bytes/bandwidth))."""

    name: str
    layers: int
    peak: float
    bandwidth: float
    fixed: float
    flops: tuple[tuple[int, float], ...]
    bytes_base: float
    bytes: tuple[tuple[int, float], ...]
    bound_if_memory: Bound = "memory"


class Roofline(StepTimeModel):
    """Datasheet roofline of one replica: `model` on `tp × pp` devices of kind `device`.

    Args:
        layout: the full parallel layout (attention-DP, MoE-TP, EP, routing); default tp × pp with
            the experts sharded like attention. Given, it replaces `tp` and `pp`.
        weight_dtype: stored format of the quantizable weights (default: as the checkpoint stores
            each module, `ModelSpec.dtypes`).
        kv_dtype: KV-cache format (default bf16).

    Each weight GEMM reads its module's weights in that module's dtype and computes at the rate
    `gemm_compute_dtype` gives for it on this device; activations are 16-bit.
    """

    def __init__(self, model: ModelSpec, device: DeviceSpec, *, tp: int = 1, pp: int = 1,
                 weight_dtype: str | None = None, kv_dtype: str | None = None,
                 efficiency: Efficiency | None = None, layout: ParallelLayout | None = None) -> None:
        layout = layout_of(tp, pp, layout)
        layout.check(model)
        self.layout = layout
        self.model, self.device, self.tp, self.pp = model, device, layout.tp, layout.pp
        self.weight_dtype = normalize_dtype(weight_dtype or model.weight_dtype)
        self.kv_dtype = normalize_dtype(kv_dtype or "bf16")
        self.eff = efficiency or Efficiency()
        self.act_bytes = 2.0
        self.dtypes = model.dtypes(self.weight_dtype)
        kinds = ("attention", "mlp", "experts", "router", "embedding", "lm_head")
        self.wb = {kind: dtype_bytes(self.dtypes.of(kind)) for kind in kinds}
        self.gemm_peak = {kind: device.peak_flops(gemm_compute_dtype(self.dtypes.of(kind), device)) * self.eff.gemm
                          for kind in kinds}
        self.attn_peak = device.peak_flops("bf16") * self.eff.attention
        self.mem_bw = device.mem_bandwidth * self.eff.memory
        windows = {layer.attention.window for layer in model.layers if layer.attention.window}
        if len(windows) > 1:
            raise UserError(f"model {model.name} mixes sliding windows {sorted(windows)}; one size supported")
        self.window = windows.pop() if windows else None
        moe = [layer.mlp for layer in model.layers if layer.mlp.kind == "moe"]
        self.moe_experts = moe[0].num_experts if moe else 0
        self.moe_top_k = moe[0].top_k if moe else 0
        self.moe_slots = (self.moe_experts + layout.routing.redundant_experts) / layout.ep
        self._moe_cache: dict[float, tuple[float, float, float]] = {}
        self.ops = self._build_ops()
        self.stage_share = slowest_stage_share(model.num_layers, pp)
        self.allreduces = allreduces_of(model, layout)
        self._ar_cache: dict[float, float] = {}
        self._lines: dict[int, tuple[float, tuple[tuple[float, float, float, float], ...]]] = {}

    # ------------------------------------------------------------------ public interface
    def step_time(self, shape: StepShape) -> StepTime:
        agg = self.aggregates(shape)
        ops = []
        total = self.eff.step_overhead_s
        for op in self.ops:
            flops = sum(c * agg[i] for i, c in op.flops)
            nbytes = sum(c * agg[i] for i, c in op.bytes)
            if not flops and not nbytes:
                continue  # the operator does not run in this step
            nbytes += op.bytes_base
            t_compute = flops / op.peak if op.peak else 0.0
            t_memory = nbytes / op.bandwidth if op.bandwidth else 0.0
            seconds = op.layers * (op.fixed + max(t_compute, t_memory))
            bound: Bound = "compute" if t_compute >= t_memory and flops else op.bound_if_memory
            total += seconds
            ops.append(OpTime(op.name, seconds, op.layers * flops, op.layers * nbytes, bound))
        if self.allreduces and agg[TOKENS]:
            seconds = self.allreduce_seconds(agg[TOKENS])
            total += seconds
            ops.append(OpTime("tp.allreduce", seconds, 0.0, self.allreduce_bytes(agg[TOKENS]), "comm"))
        if self.eff.step_overhead_s:
            ops.append(OpTime("step.overhead", self.eff.step_overhead_s, 0.0, 0.0, "overhead"))
        return StepTime(total, tuple(ops))

    def allreduce_seconds(self, tokens: float) -> float:
        """Seconds of a step's all-reduces (`allreduces_of`) for `tokens` (padded) tokens of this
        rank, each of token_scale × tokens × hidden activations (`perf.comm`)."""
        if not self.allreduces or tokens <= 0:
            return 0.0
        cached = self._ar_cache.get(tokens)
        if cached is None:
            row = self.model.hidden_size * self.act_bytes
            cached = sum(ar.blocks * comm.allreduce_seconds(self.device, ar.gpus, ar.token_scale * tokens * row)
                         for ar in self.allreduces)
            self._ar_cache[tokens] = cached
        return cached

    def allreduce_bytes(self, tokens: float) -> float:
        """Bytes the step's all-reduces reduce (each call's buffer, summed) for `tokens` tokens."""
        row = self.model.hidden_size * self.act_bytes
        return sum(ar.blocks * ar.token_scale * tokens * row for ar in self.allreduces)

    def seconds(self, shape: StepShape) -> float:
        return self._evaluate(self.aggregates(shape))

    def decode_seconds(self, n: int, context_sum: int) -> float:
        if n <= 0:
            return 0.0
        if self.window:
            return self._evaluate(self._decode_aggregates(n, context_sum))
        fixed, lines = self._decode_lines(n)
        total = fixed
        for c0, c1, m0, m1 in lines:
            c = c0 + c1 * context_sum
            m = m0 + m1 * context_sum
            total += c if c > m else m
        return total

    def decode_run_seconds(self, n: int, context_sum: int, k: int) -> float:
        """Closed-form sum of k decode iterations (exact for this piecewise-linear model)."""
        if k <= 0 or n <= 0:
            return 0.0
        if not self.window:
            fixed, lines = self._decode_lines(n)
            total = k * fixed
            step = float(n)  # the context sum grows by n per iteration
            for c0, c1, m0, m1 in lines:
                total += _sum_max(c0 + c1 * context_sum, c1 * step, m0 + m1 * context_sum, m1 * step, 0, k)
            return total
        total = k * (self.eff.step_overhead_s + self.allreduce_seconds(self._decode_aggregates(n, 0)[TOKENS]))
        for lo, hi, start, slope in self._decode_segments(n, context_sum, k):
            for op in self.ops:
                total += op.layers * _sum_max_lines(op, start, slope, lo, hi)
        return total

    def pp_send_seconds(self, tokens: int) -> float:
        """One stage-to-stage send of `tokens` tokens' hidden states (the "pp.send_recv" operator)."""
        agg = [0.0] * N_AGG
        agg[TOKENS] = float(tokens)
        return sum(ops_seconds([op], agg) / op.layers for op in self.ops if op.name == "pp.send_recv")

    def _decode_lines(self, n: int) -> tuple[float, tuple[tuple[float, float, float, float], ...]]:
        """For `n` decoding sequences without sliding windows: the fixed seconds of a step and, per
        operator that runs, its compute and memory seconds as lines in the context sum S:
        (c0, c1, m0, m1) with time = max(c0 + c1 S, m0 + m1 S). Cached per n."""
        cached = self._lines.get(n)
        if cached is not None:
            return cached
        start = self._decode_aggregates(n, 0)
        slope = [0.0] * N_AGG
        slope[DEC_KV] = 1.0
        fixed = self.eff.step_overhead_s + self.allreduce_seconds(start[TOKENS])
        lines = []
        for op in self.ops:
            c0, c1, m0, m1 = _op_lines(op, start, slope)
            if c0 or c1 or m0 or m1:
                fixed += op.layers * op.fixed
                lines.append((op.layers * c0, op.layers * c1, op.layers * m0, op.layers * m1))
        cached = (fixed, tuple(lines))
        self._lines[n] = cached
        return cached

    def _decode_segments(self, n: int, context_sum: int, k: int):
        """Iteration ranges [lo, hi) over which the aggregates are start + slope × i."""
        start = self._decode_aggregates(n, context_sum)
        slope = [0.0] * N_AGG
        slope[DEC_KV] = float(n)
        if not self.window:
            return [(0, k, start, slope)]
        mean = context_sum / n
        knee = min(k, max(0, math.ceil(self.window - mean)))  # first i with mean + i >= window
        segments = []
        if knee > 0:
            growing = list(slope)
            growing[DEC_KV_W] = float(n)
            segments.append((0, knee, start, growing))
        if knee < k:
            capped = list(start)
            capped[DEC_KV_W] = float(n * self.window)
            segments.append((knee, k, capped, slope))
        return segments

    # ------------------------------------------------------------------ aggregates
    def aggregates(self, shape: StepShape) -> list[float]:
        """The aggregate vector of a step (see the module's index constants)."""
        agg = [0.0] * N_AGG
        w = self.window
        for chunk in shape.prefill:
            c, ctx = chunk.tokens, chunk.context
            agg[TOKENS] += c
            agg[PF_TOKENS] += c
            agg[SEQS] += 1
            if chunk.last:
                agg[SAMPLED] += 1
            agg[PF_PAIRS] += c * (ctx + (c + 1) / 2)
            agg[PF_KV] += ctx + c
            if w:
                agg[PF_PAIRS_W] += c * min(ctx + (c + 1) / 2, w)
                agg[PF_KV_W] += min(ctx + c, w)
        n = len(shape.decode)
        if n:
            agg[TOKENS] += n
            agg[DECODES] += n
            agg[SAMPLED] += n
            agg[SEQS] += n
            agg[DEC_KV] += sum(shape.decode)
            if w:
                agg[DEC_KV_W] += sum(min(x, w) for x in shape.decode)
        agg[TOKENS] = cudagraph_tokens(agg[TOKENS], self.eff.cudagraph_max_tokens)
        self._moe_aggregates(agg, prefill=bool(agg[PF_TOKENS]))
        return agg

    def _decode_aggregates(self, n: int, context_sum: int) -> list[float]:
        agg = [0.0] * N_AGG
        agg[SAMPLED] = agg[SEQS] = agg[DECODES] = float(n)
        agg[TOKENS] = cudagraph_tokens(float(n), self.eff.cudagraph_max_tokens)
        agg[DEC_KV] = float(context_sum)
        if self.window:
            agg[DEC_KV_W] = n * min(context_sum / n, self.window)
        self._moe_aggregates(agg, prefill=False)
        return agg

    def _moe_aggregates(self, agg: list[float], prefill: bool) -> None:
        """Fill the MoE aggregates from the rank's tokens (every attention-DP rank assumed alike)."""
        if not self.moe_experts or not agg[TOKENS]:
            return
        tokens = agg[TOKENS]
        cached = self._moe_cache.get(tokens)
        if cached is None:
            lay, e, k = self.layout, self.moe_experts, self.moe_top_k
            entering = tokens * lay.attention_dp * k
            busiest = entering / lay.ep * lay.routing.max_over_mean(round(entering), lay.ep)
            touched = self.moe_slots * (1.0 - (1.0 - k / e) ** (tokens * lay.attention_dp))
            cached = (busiest, entering, touched)
            if len(self._moe_cache) > 100_000:
                self._moe_cache.clear()
            self._moe_cache[tokens] = cached
        agg[MOE_SEL], agg[MOE_IN], agg[EXPERTS] = cached
        if self.layout.attention_dp > 1 and self.layout.ep > 1:
            agg[A2A_NORMAL if prefill else A2A_LL] = tokens

    def _evaluate(self, agg: list[float]) -> float:
        return self.eff.step_overhead_s + ops_seconds(self.ops, agg) + self.allreduce_seconds(agg[TOKENS])

    # ------------------------------------------------------------------ operators
    def _build_ops(self) -> list[_Op]:
        m, tp = self.model, self.tp
        h, ab = m.hidden_size, self.act_bytes
        wb, kb = self.wb, dtype_bytes(self.kv_dtype)
        lat = self.eff.kernel_latency_s
        protos: dict[tuple, _Op] = {}
        layer_counts: dict[tuple, int] = {}

        def add(name: str, layers: int, peak: float, bw: float, fixed: float,
                flops: dict[int, float], bytes_base: float, nbytes: dict[int, float],
                bound: Bound = "memory") -> None:
            """Register an operator; identical operators of different layer groups merge."""
            op = _Op(name, 0, peak, bw, fixed, tuple(sorted(flops.items())), bytes_base,
                     tuple(sorted(nbytes.items())), bound)
            key = (op.name, op.peak, op.bandwidth, op.fixed, op.flops, op.bytes_base, op.bytes, bound)
            protos.setdefault(key, op)
            layer_counts[key] = layer_counts.get(key, 0) + layers

        def gemm(name: str, layers: int, n_in: float, n_out: float, kind: str) -> None:
            """Weight GEMM [tokens × n_in] @ [n_in × n_out] (per device) of a `kind` module."""
            add(name, layers, self.gemm_peak[kind], self.mem_bw, lat, {TOKENS: 2.0 * n_in * n_out},
                n_in * n_out * wb[kind], {TOKENS: (n_in + n_out) * ab})

        for layer, count in m.layer_groups:
            self._layer_ops(layer, count, gemm, add, h, ab, wb, kb, lat)

        # Embedding lookup and LM head (vocabulary-parallel across TP ranks).
        add("embed", 1, 0.0, self.mem_bw, lat, {}, 0.0, {TOKENS: 2.0 * h * ab})
        add("lm_head", 1, self.gemm_peak["lm_head"], self.mem_bw, lat, {SAMPLED: 2.0 * h * m.vocab_size / tp},
            h * m.vocab_size * wb["lm_head"] / tp, {SAMPLED: (h * ab + 4.0 * m.vocab_size / tp)})
        d = self.device
        inter = pp_inter_node_hops(tp, self.pp, d.devices_per_node)
        for hops, bw, latency in ((self.pp - 1 - inter, d.intra_node_bandwidth, d.intra_node_latency),
                                  (inter, d.inter_node_bandwidth, d.inter_node_latency)):
            if hops:
                add("pp.send_recv", hops, 0.0, bw * self.eff.link, latency, {}, 0.0, {TOKENS: h * ab}, "comm")
        return [replace(op, layers=layer_counts[key]) for key, op in protos.items()]

    def _layer_ops(self, layer: LayerSpec, count: int, gemm, add, h: int, ab: float,
                   wb: dict[str, float], kb: float, lat: float) -> None:
        tp = self.tp
        att, mlp = layer.attention, layer.mlp
        if att.kind == "gqa":
            kv_width = att.num_kv_heads * att.head_dim * (1 if att.kv_shared else 2)
            gemm("attn.qkv_proj", count, h, (att.q_dim + kv_width) / tp, "attention")
            pairs, kv_read, dec = (PF_PAIRS_W, PF_KV_W, DEC_KV_W) if att.window else (PF_PAIRS, PF_KV, DEC_KV)
            qk_flops = 4.0 * att.num_heads * att.head_dim / tp
            kv_bytes = att.kv_values_per_token() * kb / max(1, min(tp, att.num_kv_heads))
            # Per new token: read Q, K, V, write O (activations) and write K, V to the cache.
            io = (2 * att.q_dim / tp + kv_width / tp) * ab + kv_bytes
            add("attn.prefill", count, self.attn_peak, self.mem_bw, 0.0, {pairs: qk_flops}, 0.0,
                {kv_read: kv_bytes, PF_TOKENS: io}, "memory")
            add("attn.decode", count, self.attn_peak, self.mem_bw, lat, {dec: qk_flops}, 0.0,
                {dec: kv_bytes, DECODES: io}, "memory")
            gemm("attn.o_proj", count, att.o_in_dim / tp, h, "attention")
        elif att.kind == "mla":
            # Decompressed MHA for prefill, absorbed MQA over the latent for decode (perf/mla.py).
            for op in mla_ops(att, h, tp, weight_bytes=wb["attention"], kv_bytes=kb, act_bytes=ab):
                peak = self.gemm_peak["attention"] if op.kind == "gemm" else self.attn_peak
                add(op.name, count, peak, self.mem_bw, lat,
                    {_MLA_AGG[k]: c for k, c in op.flops.items()}, op.weight_bytes,
                    {_MLA_AGG[k]: c for k, c in op.bytes.items()}, "memory")
        elif att.kind == "mamba":
            inner, bc = att.mamba_inner, 2 * att.ssm_groups * att.ssm_state
            gemm("mamba.in_proj", count, h, (2 * inner + bc + att.mamba_heads) / tp, "attention")
            state_bytes = att.state_values_per_sequence() * 4.0 / tp
            add("mamba.ssm", count, self.attn_peak, self.mem_bw, lat,
                {TOKENS: 6.0 * inner * att.ssm_state / tp}, 0.0,
                {SEQS: 2.0 * state_bytes, TOKENS: 3.0 * inner * ab / tp})
            gemm("mamba.out_proj", count, inner / tp, h, "attention")
        if mlp.intermediate:
            name = "mlp" if mlp.kind == "dense" else "moe.shared"
            gemm(name, count, h, mlp.matrices * mlp.intermediate / tp, "mlp")
        if mlp.kind == "moe":
            self._moe_ops(mlp, count, gemm, add, h, wb["experts"])
        norm_bytes = layer.norms * 4.0 * h * ab  # fused add + RMSNorm: read x and residual, write both
        add("norm+residual", count, 0.0, self.mem_bw, lat * layer.norms, {}, 0.0, {TOKENS: norm_bytes})

    def _moe_ops(self, mlp, count: int, gemm, add, h: int, wb: float) -> None:
        """Router, routed experts (grouped GEMM on the busiest EP rank) and the EP all-to-all."""
        gemm("moe.router", count, h, mlp.num_experts, "router")
        compute = gemm_compute_dtype(self.dtypes.of("experts"), self.device)
        c = constants_for(table_dtype(compute))
        per_expert = mlp.matrices * h * mlp.expert_intermediate / self.layout.moe_tp_ways
        peak = self.device.peak_flops(compute) * c.compute_eff
        bw = self.device.mem_bandwidth
        add("moe.experts", count, peak, bw * c.memory_eff, c.fixed_s,
            {MOE_SEL: 2.0 * per_expert, EXPERTS: 2.0 * per_expert * c.half_tokens}, 0.0,
            {EXPERTS: per_expert * wb, MOE_SEL: 4.0 * h})
        add("moe.permute", count, 0.0, bw * c.permute_eff, 0.0, {}, 0.0, {MOE_IN: 4.0 * h})
        ep = self.layout.ep
        if self.layout.attention_dp > 1 and ep > 1:
            a2a = alltoall.a2a_model(self.device, ep, self.eff.link)
            remote = mlp.top_k * alltoall.remote_fraction(ep) / self.tp  # per GPU: tokens / tp
            dispatch = remote * alltoall.dispatch_bytes_per_selection(h)
            combine = remote * alltoall.combine_bytes_per_selection(h)
            for name, phase, agg, per_token in (
                    ("moe.a2a_dispatch", a2a.ll_dispatch, A2A_LL, dispatch),
                    ("moe.a2a_combine", a2a.ll_combine, A2A_LL, combine),
                    ("moe.a2a_dispatch", a2a.normal_dispatch, A2A_NORMAL, dispatch),
                    ("moe.a2a_combine", a2a.normal_combine, A2A_NORMAL, combine)):
                add(name, count, 0.0, phase.bandwidth, phase.latency_s, {}, 0.0, {agg: per_token}, "comm")


def layout_of(tp: int, pp: int, layout: ParallelLayout | None) -> ParallelLayout:
    """`layout`, or tp × pp with experts sharded like attention; UserError if both disagree."""
    if layout is None:
        return ParallelLayout(tp=tp, pp=pp)
    if (tp, pp) not in ((1, 1), (layout.tp, layout.pp)):
        raise UserError(f"tp={tp} pp={pp} contradict the layout's tp={layout.tp} pp={layout.pp}")
    return layout


def ops_seconds(ops: list[_Op], agg: list[float]) -> float:
    """Seconds of `ops` for the step aggregates `agg`; operators with no work are skipped."""
    total = 0.0
    for op in ops:
        flops = 0.0
        for i, c in op.flops:
            flops += c * agg[i]
        nbytes = 0.0
        for i, c in op.bytes:
            nbytes += c * agg[i]
        if not flops and not nbytes:
            continue  # the operator does not run in this step (no work: weights are not read)
        nbytes += op.bytes_base
        t_c = flops / op.peak if op.peak else 0.0
        t_m = nbytes / op.bandwidth if op.bandwidth else 0.0
        total += op.layers * (op.fixed + (t_c if t_c > t_m else t_m))
    return total


def _op_lines(op: _Op, start: list[float], slope: list[float]) -> tuple[float, float, float, float]:
    """(c0, c1, m0, m1): an operator's compute and memory seconds (one layer, no fixed cost) for
    aggregates start + slope × x, as lines c0 + c1 x and m0 + m1 x."""
    f0 = f1 = 0.0
    for i, c in op.flops:
        f0 += c * start[i]
        f1 += c * slope[i]
    b0 = b1 = 0.0
    for i, c in op.bytes:
        b0 += c * start[i]
        b1 += c * slope[i]
    if f0 or f1 or b0 or b1:
        b0 += op.bytes_base  # weights are read only when the operator runs
    c0, c1 = (f0 / op.peak, f1 / op.peak) if op.peak else (0.0, 0.0)
    m0, m1 = (b0 / op.bandwidth, b1 / op.bandwidth) if op.bandwidth else (0.0, 0.0)
    return c0, c1, m0, m1


def _sum_max_lines(op: _Op, start: list[float], slope: list[float], lo: int, hi: int) -> float:
    """Σ_{i=lo}^{hi-1} fixed + max(flops(i)/peak, bytes(i)/bw) for aggregates start + slope × i."""
    c0, c1, m0, m1 = _op_lines(op, start, slope)
    if not (c0 or c1 or m0 or m1):
        return 0.0  # the operator does not run in these iterations
    return (hi - lo) * op.fixed + _sum_max(c0, c1, m0, m1, lo, hi)


def _sum_max(c0: float, c1: float, m0: float, m1: float, lo: int, hi: int) -> float:
    """Σ_{i=lo}^{hi-1} max(c0 + c1 i, m0 + m1 i), exactly."""
    if c1 == m1:
        return _sum_line(max(c0, m0), c1, lo, hi)
    # The lines cross once; left of the crossing the one with the smaller slope is larger.
    cross = (m0 - c0) / (c1 - m1)
    split = min(hi, max(lo, math.floor(cross) + 1))
    (l0, l1), (r0, r1) = ((m0, m1), (c0, c1)) if c1 > m1 else ((c0, c1), (m0, m1))
    return _sum_line(l0, l1, lo, split) + _sum_line(r0, r1, split, hi)


def _sum_line(a: float, b: float, lo: int, hi: int) -> float:
    """Σ_{i=lo}^{hi-1} (a + b i)."""
    n = hi - lo
    if n <= 0:
        return 0.0
    return n * a + b * (lo + hi - 1) * n / 2


def pp_inter_node_hops(tp: int, pp: int, devices_per_node: int) -> int:
    """Pipeline stage boundaries that cross nodes when stages of `tp` devices fill nodes in order."""
    stages_per_node = max(1, devices_per_node // tp)
    return (pp - 1) // stages_per_node


def gemm_compute_dtype(weight_dtype: str, device: DeviceSpec) -> str:
    """The dtype a weight GEMM computes in on `device`: fp8, fp4 and int8 (w8a8) weights at their own
    rate where the device has that math (fp4: Blackwell), else dequantized to bf16 (weight-only
    kernels such as Marlin); int4 and 16-bit weights in bf16."""
    dtype = normalize_dtype(weight_dtype)
    return dtype if dtype in ("fp8", "fp4", "int8") and dtype in device.flops else "bf16"
