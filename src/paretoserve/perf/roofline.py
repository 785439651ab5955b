"""`Roofline`: step time from datasheet peaks × efficiencies (DESIGN §2).

Each operator of each layer kind knows its FLOPs and bytes as linear functions of a few
aggregates of the step (tokens, sampled rows, attention pairs, KV tokens read, ...). Its time is

    fixed + max(FLOPs / (peak × compute efficiency), bytes / (bandwidth × memory efficiency))

summed over the layers it appears in, plus pipeline send/recv from the link model and the
tensor-parallel all-reduces of `paretoserve.perf.comm` (algorithm and link as vLLM picks them; their
time depends on the step's token count only, so it is a per-step constant of the decode fast path).
Token counts up to the largest CUDA-graph capture size are padded to the next captured size for
the linear layers and all-reduces, as vLLM V1 runs them. Because every operator is linear in the
aggregates, a run of k decode iterations (context +1 per sequence each time) is a sum of maxima of
two lines and has a closed form, which `decode_run_seconds` uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes, normalize_dtype
from paretoserve.catalog.model import LayerSpec, ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf import comm
from paretoserve.perf.base import StepTimeModel
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
EXPERTS = 9        # distinct routed experts touched by the batch (per MoE layer)
PF_TOKENS = 10     # prompt tokens computed (prefill part of TOKENS)
DECODES = 11       # decoding sequences (decode part of TOKENS)
N_AGG = 12


#: Default seconds per engine iteration outside the modelled kernels (scheduler, input preparation,
#: sampling, output processing, launch gaps). Fitted, not measured: the value minimizing the median
#: |TPOT error| of the datasheet model (with the `perf.comm` all-reduce and CUDA-graph padding) on
#: the 93 H100 Qwen/Qwen3-32B vLLM aggregated points of shared/data/silicon (sweep 0-4 ms: 16.5% at
#: 0, 4.8% at 2.75 ms, 5.0% at 3 ms); the Llama-3.1-70B vLLM points were held out (16.5% -> 3.9%).
#: The runs outside that test set disagree and were not usable for the fit: the RTX 4090 vLLM run is
#: already over-predicted without it (TPOT +8.6%), the Splitwise static batches under-predicted by
#: ~40-50% (an older engine). It absorbs whatever per-step cost the datasheet model misses, not
#: only CPU time.
STEP_OVERHEAD_S = 2.75e-3


def cudagraph_tokens(tokens: float, max_tokens: int) -> float:
    """`tokens` padded up to vLLM's next CUDA-graph capture size ([1, 2, 4] + range(8, 256, 8) +
    range(256, max + 1, 16)); unchanged above `max_tokens` (eager) or when `max_tokens` is 0."""
    if tokens <= 0 or tokens > max_tokens:
        return tokens
    for small in (1.0, 2.0, 4.0):
        if tokens <= small:
            return small
    step = 8 if tokens <= 256 else 16
    padded = float(math.ceil(tokens / step) * step)
    return padded if padded <= max_tokens else tokens


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
        weight_dtype: stored weight format (default: the model's native dtype).
        kv_dtype: KV-cache format (default bf16).
        activation_dtype: activations and compute dtype for GEMMs (bf16; fp8 GEMMs when weights are fp8).
    """

    def __init__(self, model: ModelSpec, device: DeviceSpec, *, tp: int = 1, pp: int = 1,
                 weight_dtype: str | None = None, kv_dtype: str | None = None,
                 efficiency: Efficiency | None = None) -> None:
        check_parallelism(model, tp, pp)
        self.model, self.device, self.tp, self.pp = model, device, tp, pp
        self.weight_dtype = normalize_dtype(weight_dtype or model.weight_dtype)
        self.kv_dtype = normalize_dtype(kv_dtype or "bf16")
        self.eff = efficiency or Efficiency()
        self.act_bytes = 2.0
        compute_dtype = gemm_compute_dtype(self.weight_dtype)
        self.gemm_peak = device.peak_flops(compute_dtype) * self.eff.gemm
        self.attn_peak = device.peak_flops("bf16") * self.eff.attention
        self.mem_bw = device.mem_bandwidth * self.eff.memory
        windows = {layer.attention.window for layer in model.layers if layer.attention.window}
        if len(windows) > 1:
            raise UserError(f"model {model.name} mixes sliding windows {sorted(windows)}; one size supported")
        self.window = windows.pop() if windows else None
        moe = [layer.mlp for layer in model.layers if layer.mlp.kind == "moe"]
        self.moe_experts = moe[0].num_experts if moe else 0
        self.moe_top_k = moe[0].top_k if moe else 0
        self.ops = self._build_ops()
        self.allreduces = self._allreduce_count()
        self._ar_cache: dict[float, float] = {}
        self._lines: dict[int, tuple[float, tuple[tuple[float, float, float, float], ...]]] = {}

    # ------------------------------------------------------------------ public interface
    def step_time(self, shape: StepShape) -> StepTime:
        agg = self.aggregates(shape)
        ops = []
        total = self.eff.step_overhead_s
        for op in self.ops:
            flops = sum(c * agg[i] for i, c in op.flops)
            nbytes = op.bytes_base + sum(c * agg[i] for i, c in op.bytes)
            if not flops and not nbytes:
                continue  # the operator does not run in this step
            t_compute = flops / op.peak if op.peak else 0.0
            t_memory = nbytes / op.bandwidth if op.bandwidth else 0.0
            seconds = op.layers * (op.fixed + max(t_compute, t_memory))
            bound: Bound = "compute" if t_compute >= t_memory and flops else op.bound_if_memory
            total += seconds
            ops.append(OpTime(op.name, seconds, op.layers * flops, op.layers * nbytes, bound))
        if self.allreduces and agg[TOKENS]:
            seconds = self.allreduce_seconds(agg[TOKENS])
            total += seconds
            ops.append(OpTime("tp.allreduce", seconds, 0.0,
                              self.allreduces * agg[TOKENS] * self.model.hidden_size * self.act_bytes, "comm"))
        if self.eff.step_overhead_s:
            ops.append(OpTime("step.overhead", self.eff.step_overhead_s, 0.0, 0.0, "overhead"))
        return StepTime(total, tuple(ops))

    def allreduce_seconds(self, tokens: float) -> float:
        """Seconds of a step's tensor-parallel all-reduces for `tokens` (padded) tokens: every
        attention and MLP block of every layer reduces tokens × hidden activations (`perf.comm`)."""
        if not self.allreduces or tokens <= 0:
            return 0.0
        cached = self._ar_cache.get(tokens)
        if cached is None:
            nbytes = tokens * self.model.hidden_size * self.act_bytes
            cached = self.allreduces * comm.allreduce_seconds(self.device, self.tp, nbytes)
            self._ar_cache[tokens] = cached
        return cached

    def _allreduce_count(self) -> int:
        """All-reduces per step: one after each attention and each MLP block, when tp > 1."""
        if self.tp <= 1:
            return 0
        return sum(count * ((layer.attention.kind != "none") + (layer.mlp.kind != "none"))
                   for layer, count in self.model.layer_groups)

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
        agg[EXPERTS] = self._experts_touched(agg[TOKENS])
        return agg

    def _decode_aggregates(self, n: int, context_sum: int) -> list[float]:
        agg = [0.0] * N_AGG
        agg[SAMPLED] = agg[SEQS] = agg[DECODES] = float(n)
        agg[TOKENS] = cudagraph_tokens(float(n), self.eff.cudagraph_max_tokens)
        agg[DEC_KV] = float(context_sum)
        if self.window:
            agg[DEC_KV_W] = n * min(context_sum / n, self.window)
        agg[EXPERTS] = self._experts_touched(agg[TOKENS])
        return agg

    def _experts_touched(self, tokens: float) -> float:
        """Expected distinct experts hit when `tokens` tokens each pick top-k of E uniformly."""
        if not self.moe_experts:
            return 0.0
        e, k = self.moe_experts, self.moe_top_k
        return e * (1.0 - (1.0 - k / e) ** tokens)

    def _evaluate(self, agg: list[float]) -> float:
        return self.eff.step_overhead_s + ops_seconds(self.ops, agg) + self.allreduce_seconds(agg[TOKENS])

    # ------------------------------------------------------------------ operators
    def _build_ops(self) -> list[_Op]:
        m, tp = self.model, self.tp
        h, ab = m.hidden_size, self.act_bytes
        wb, kb = dtype_bytes(self.weight_dtype), dtype_bytes(self.kv_dtype)
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

        def gemm(name: str, layers: int, n_in: float, n_out: float) -> None:
            """Weight GEMM [tokens × n_in] @ [n_in × n_out] (per device)."""
            add(name, layers, self.gemm_peak, self.mem_bw, lat, {TOKENS: 2.0 * n_in * n_out},
                n_in * n_out * wb, {TOKENS: (n_in + n_out) * ab})

        for layer, count in m.layer_groups:
            self._layer_ops(layer, count, gemm, add, h, ab, wb, kb, lat)

        # Embedding lookup and LM head (vocabulary-parallel across TP ranks).
        add("embed", 1, 0.0, self.mem_bw, lat, {}, 0.0, {TOKENS: 2.0 * h * ab})
        add("lm_head", 1, self.gemm_peak, self.mem_bw, lat, {SAMPLED: 2.0 * h * m.vocab_size / tp},
            h * m.vocab_size * wb / tp, {SAMPLED: (h * ab + 4.0 * m.vocab_size / tp)})
        d = self.device
        inter = pp_inter_node_hops(tp, self.pp, d.devices_per_node)
        for hops, bw, latency in ((self.pp - 1 - inter, d.intra_node_bandwidth, d.intra_node_latency),
                                  (inter, d.inter_node_bandwidth, d.inter_node_latency)):
            if hops:
                add("pp.send_recv", hops, 0.0, bw * self.eff.link, latency, {}, 0.0, {TOKENS: h * ab}, "comm")
        return [replace(op, layers=layer_counts[key]) for key, op in protos.items()]

    def _layer_ops(self, layer: LayerSpec, count: int, gemm, add, h: int, ab: float, wb: float,
                   kb: float, lat: float) -> None:
        tp = self.tp
        att, mlp = layer.attention, layer.mlp
        if att.kind == "gqa":
            kv_width = att.num_kv_heads * att.head_dim * (1 if att.kv_shared else 2)
            gemm("attn.qkv_proj", count, h, (att.q_dim + kv_width) / tp)
            pairs, kv_read, dec = (PF_PAIRS_W, PF_KV_W, DEC_KV_W) if att.window else (PF_PAIRS, PF_KV, DEC_KV)
            qk_flops = 4.0 * att.num_heads * att.head_dim / tp
            kv_bytes = att.kv_values_per_token() * kb / max(1, min(tp, att.num_kv_heads))
            # Per new token: read Q, K, V, write O (activations) and write K, V to the cache.
            io = (2 * att.q_dim / tp + kv_width / tp) * ab + kv_bytes
            add("attn.prefill", count, self.attn_peak, self.mem_bw, 0.0, {pairs: qk_flops}, 0.0,
                {kv_read: kv_bytes, PF_TOKENS: io}, "memory")
            add("attn.decode", count, self.attn_peak, self.mem_bw, lat, {dec: qk_flops}, 0.0,
                {dec: kv_bytes, DECODES: io}, "memory")
            gemm("attn.o_proj", count, att.o_in_dim / tp, h)
        elif att.kind == "mla":
            params = att.params(h)
            add("attn.mla_proj", count, self.gemm_peak, self.mem_bw, lat,
                {TOKENS: 2.0 * params / tp}, params * wb / tp, {TOKENS: 4.0 * h * ab})
            # Absorbed MLA: each (query, key) pair costs 2 × heads × (latent + rope) + 2 × heads × latent
            # FLOPs; the latent KV cache is replicated on every TP rank.
            pair_flops = 2.0 * att.num_heads * (2 * att.kv_lora_rank + att.rope_dim) / tp
            kv_bytes = att.kv_values_per_token() * kb
            add("attn.prefill", count, self.attn_peak, self.mem_bw, 0.0, {PF_PAIRS: pair_flops}, 0.0,
                {PF_KV: kv_bytes, PF_TOKENS: kv_bytes}, "memory")
            add("attn.decode", count, self.attn_peak, self.mem_bw, lat, {DEC_KV: pair_flops}, 0.0,
                {DEC_KV: kv_bytes, DECODES: kv_bytes}, "memory")
        elif att.kind == "mamba":
            inner, bc = att.mamba_inner, 2 * att.ssm_groups * att.ssm_state
            gemm("mamba.in_proj", count, h, (2 * inner + bc + att.mamba_heads) / tp)
            state_bytes = att.state_values_per_sequence() * 4.0 / tp
            add("mamba.ssm", count, self.attn_peak, self.mem_bw, lat,
                {TOKENS: 6.0 * inner * att.ssm_state / tp}, 0.0,
                {SEQS: 2.0 * state_bytes, TOKENS: 3.0 * inner * ab / tp})
            gemm("mamba.out_proj", count, inner / tp, h)
        if mlp.intermediate:
            name = "mlp" if mlp.kind == "dense" else "moe.shared"
            gemm(name, count, h, mlp.matrices * mlp.intermediate / tp)
        if mlp.kind == "moe":
            gemm("moe.router", count, h, mlp.num_experts)
            per_expert = mlp.matrices * h * mlp.expert_intermediate
            add("moe.experts", count, self.gemm_peak, self.mem_bw, lat,
                {TOKENS: 2.0 * per_expert * mlp.top_k / tp}, 0.0,
                {EXPERTS: per_expert * wb / tp, TOKENS: mlp.top_k * 2.0 * h * ab})
        norm_bytes = layer.norms * 4.0 * h * ab  # fused add + RMSNorm: read x and residual, write both
        add("norm+residual", count, 0.0, self.mem_bw, lat * layer.norms, {}, 0.0, {TOKENS: norm_bytes})


def ops_seconds(ops: list[_Op], agg: list[float]) -> float:
    """Seconds of `ops` for the step aggregates `agg`; operators with no work are skipped."""
    total = 0.0
    for op in ops:
        flops = 0.0
        for i, c in op.flops:
            flops += c * agg[i]
        nbytes = op.bytes_base
        for i, c in op.bytes:
            nbytes += c * agg[i]
        if not flops and not nbytes:
            continue  # the operator does not run in this step
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
    b0, b1 = op.bytes_base, 0.0
    for i, c in op.bytes:
        b0 += c * start[i]
        b1 += c * slope[i]
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


def gemm_compute_dtype(weight_dtype: str) -> str:
    """The dtype the step models compute weight GEMMs in: fp8 for fp8 and fp4 weights, else bf16."""
    return "fp8" if normalize_dtype(weight_dtype) in ("fp8", "fp4") else "bf16"


def check_parallelism(model: ModelSpec, tp: int, pp: int) -> None:
    """UserError unless `tp` divides every layer's heads and `pp` ≤ layers."""
    if tp < 1 or pp < 1:
        raise UserError(f"tp and pp must be >= 1, got tp={tp} pp={pp}")
    for layer in model.layers:
        att = layer.attention
        heads = att.num_heads if att.kind in ("gqa", "mla") else att.mamba_heads
        if heads and heads % tp:
            valid = [d for d in range(1, heads + 1) if heads % d == 0 and d <= 64]
            raise UserError(f"--tp {tp} does not divide {model.name}'s {heads} attention heads; "
                            f"valid TP sizes: {', '.join(map(str, valid))}")
        if att.kind == "gqa" and att.num_kv_heads and tp > att.num_kv_heads and tp % att.num_kv_heads:
            raise UserError(f"--tp {tp} is neither a divisor nor a multiple of {model.name}'s "
                            f"{att.num_kv_heads} KV heads")
    if pp > model.num_layers:
        raise UserError(f"--pp {pp} exceeds {model.name}'s {model.num_layers} layers")
