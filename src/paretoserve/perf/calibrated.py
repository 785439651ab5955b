"""`Calibrated`: the roofline's operators timed by fitted kernel efficiencies (DESIGN §2).

Same operator structure as `Roofline` for a model on `tp × pp` devices, but:

- **weight GEMMs** (QKV / O projections, gated MLP as gate-up + down, shared experts, router,
  Mamba in/out projections, LM head) take the time of the measured GEMM of that shape:
  ideal(m, n, k) / e_gemm(m, n, k) with m = tokens in the step (sampled rows for the LM head);
- **attention** of GQA layers takes context-attention efficiency for the prefill chunks (batch =
  chunks, length = the prompt length whose causal pairs equal the chunks' mean pairs) and
  generation-attention efficiency for the decodes (batch = decodes, length = mean context);
- **all-reduces** (the roofline's, by layout) take the fitted all-reduce efficiency when there is one;
- **MLA** layers (models whose attention is all MLA) take the constants fitted to the MLA module
  tables when the profile has them (`perf.mla.MlaConstants`): the prefill-only operators (latent
  up-projection, decompressed attention) the context constants, the decode-only ones (absorbed
  projection and attention) the generation constants, and the projections every token runs (q/kv
  down, q up, o) those of the step's phase — context when it has prompt tokens, as in the tables;
- everything else (norms, embedding, Mamba mixers, routed experts, pipeline send/recv) is the
  roofline formula with default efficiencies.

Global coefficients (`Coefficients`, fitted end to end from a run) scale on top: compute and
memory efficiency scales (a kernel's time × max(C/s_c, M/s_m) / max(C, M), where C and M are its
ideal compute and memory times), a fixed overhead per iteration and one per token.

Hot path: the GEMM time of every token count is tabulated once (`numpy`, extended on demand), so a
step costs a few table reads; decode attention is, per decode batch size `n`, a piecewise-linear
function of the mean context with knots at 8 per octave (plus the sliding window). Because every
term of a decode-only iteration is then piecewise linear in the iteration index, `decode_run_seconds`
sums k iterations in closed form, equal to the step-by-step sum to rounding.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes
from paretoserve.catalog.model import ModelSpec
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.fitted import Coefficients, Grid, KernelFit, table_dtype
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.mla import OP_PHASE, MlaConstants, mla_ops
from paretoserve.perf.profile import load_profile
from paretoserve.perf.roofline import (
    _MLA_AGG,
    DEC_KV,
    PF_KV,
    PF_KV_W,
    PF_PAIRS,
    PF_PAIRS_W,
    PF_TOKENS,
    SAMPLED,
    TOKENS,
    Efficiency,
    Roofline,
    _Op,
    _sum_line,
    _sum_max_lines,
    cudagraph_tokens,
    gemm_compute_dtype,
    ops_seconds,
)
from paretoserve.perf.shape import Bound, OpTime, StepShape, StepTime

#: Knots per octave of the decode-attention piecewise-linear function of mean context.
KNOTS_PER_OCTAVE = 8


@dataclass(frozen=True)
class _Gemm:
    """One weight GEMM of the step: [m × k] @ [k × n] repeated `layers` times; m = tokens or sampled;
    `kind` is the module kind whose weight dtype it reads (`ModelSpec.dtypes`)."""

    name: str
    layers: int
    n: float
    k: float
    sampled: bool
    kind: str


@dataclass(frozen=True)
class _Attn:
    """GQA attention of `layers` layers, per device: heads, KV heads, head dims, window, KV bytes."""

    layers: int
    heads: float
    kv_heads: float
    head_dim: float
    values_per_token: float  # cached values per token per device (K and V)
    window: int | None


class Calibrated(StepTimeModel):
    """Step time of `model` on `tp × pp` devices of kind `device` from fitted kernel efficiencies.

    Args:
        kernels: fitted kernel efficiencies by kind ("gemm", "context_attention",
            "generation_attention", "allreduce"); a missing kind falls back to the roofline formula.
        coefficients: global end-to-end corrections.
        efficiency: default efficiencies of the operators without kernel tables.
        gemm_dtype: table group for FP8 weights ("fp8" per-tensor scaling, or "fp8_block").
        layout: the parallel layout (see `Roofline`); the routed experts and all-to-all keep the
            roofline's layout-aware operators.
        mla: fitted MLA constants by phase ("context", "generation"; both needed), from the
            profile; without them MLA layers keep the roofline formula.
    """

    def __init__(self, model: ModelSpec, device: DeviceSpec, *, tp: int = 1, pp: int = 1,
                 weight_dtype: str | None = None, kv_dtype: str | None = None,
                 kernels: Mapping[str, KernelFit] | None = None,
                 coefficients: Coefficients | None = None, efficiency: Efficiency | None = None,
                 gemm_dtype: str | None = None, layout: ParallelLayout | None = None,
                 mla: Mapping[str, MlaConstants] | None = None) -> None:
        self.coef = coefficients or Coefficients()
        base = efficiency or Efficiency()
        cs, ms = self.coef.compute_scale, self.coef.memory_scale
        if not (cs > 0 and ms > 0):
            raise ValueError("compute_scale and memory_scale must be positive")
        scaled = replace(base, gemm=base.gemm * cs, attention=base.attention * cs, memory=base.memory * ms,
                         step_overhead_s=0.0)
        self.roof = Roofline(model, device, tp=tp, pp=pp, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                             efficiency=scaled, layout=layout)
        self.model, self.device, self.tp, self.pp = model, device, self.roof.tp, self.roof.pp
        self.weight_dtype, self.kv_dtype = self.roof.weight_dtype, self.roof.kv_dtype
        self.kernels = dict(kernels or {})
        self.compute_dtype = gemm_compute_dtype(self.weight_dtype, device)
        dtypes = self.roof.dtypes
        self._compute = {kind: gemm_compute_dtype(dtypes.of(kind), device) for kind in self.roof.wb}
        self._groups = {kind: (gemm_dtype or "fp8") if c == "fp8" else "bfloat16" for kind, c in self._compute.items()}
        self.window = self.roof.window
        self.stage_share = self.roof.stage_share
        self._gemms, self._attn, self._allreduce = self._table_ops()
        replaced = set()
        if "gemm" in self.kernels:
            replaced |= {g.name for g in self._gemms}
        if self._attn:
            replaced |= {"attn.prefill", "attn.decode"}
        if self._allreduce:
            replaced.add("tp.allreduce")
        mla = dict(mla or {})
        fitted_mla = {"context", "generation"} <= set(mla) and all(
            layer.attention.kind in ("mla", "none") for layer in model.layers) and any(
            layer.attention.kind == "mla" for layer in model.layers)
        if fitted_mla:
            replaced |= {op.name for op in self._mla_ops(mla, "context")}
        self.rest: list[_Op] = [op for op in self.roof.ops if op.name not in replaced]
        #: the remaining operators of steps with prompt tokens (they differ only in fitted MLA)
        self.rest_prefill: list[_Op] = self.rest
        if fitted_mla:
            self.rest_prefill = self.rest + self._mla_ops(mla, "context")
            self.rest = self.rest + self._mla_ops(mla, "generation")
        if "gemm" not in self.kernels:
            self._gemms = []
        self._tok = np.zeros(1)
        self._samp = np.zeros(1)
        self._extend(8192)
        self._grids: dict[tuple[str, int], Grid] = {}
        self._ctx_tables: dict[_Attn, _Table2D] = {}
        self._dec_pl: dict[int, tuple[list[float], list[float]]] = {}
        self._dec_cache: dict[tuple[int, int], float] = {}
        self._n_const: dict[int, float] = {}

    # ------------------------------------------------------------------ structure
    def _table_ops(self) -> tuple[list[_Gemm], list[_Attn], bool]:
        m, tp = self.model, self.tp
        h = m.hidden_size
        gemms: dict[tuple, int] = {}
        attn: dict[tuple, int] = {}
        has_mla = any(layer.attention.kind == "mla" for layer in m.layers)

        def gemm(name: str, layers: int, n: float, k: float, kind: str, sampled: bool = False) -> None:
            key = (name, n, k, sampled, kind)
            gemms[key] = gemms.get(key, 0) + layers

        for layer, count in m.layer_groups:
            att, mlp = layer.attention, layer.mlp
            if att.kind == "gqa":
                kv_width = att.num_kv_heads * att.head_dim * (1 if att.kv_shared else 2)
                gemm("attn.qkv_proj", count, (att.q_dim + kv_width) / tp, h, "attention")
                gemm("attn.o_proj", count, h, att.o_in_dim / tp, "attention")
                kv_div = max(1, min(tp, att.num_kv_heads))
                key = (att.num_heads / tp, max(1.0, att.num_kv_heads / tp), float(att.head_dim),
                       att.kv_values_per_token() / kv_div, att.window)
                attn[key] = attn.get(key, 0) + count
            elif att.kind == "mamba":
                inner, bc = att.mamba_inner, 2 * att.ssm_groups * att.ssm_state
                gemm("mamba.in_proj", count, (2 * inner + bc + att.mamba_heads) / tp, h, "attention")
                gemm("mamba.out_proj", count, h, inner / tp, "attention")
            if mlp.intermediate:
                name = "mlp" if mlp.kind == "dense" else "moe.shared"
                up = (2 if mlp.gated else 1) * mlp.intermediate / tp
                gemm(name, count, up, h, "mlp")
                gemm(name, count, h, mlp.intermediate / tp, "mlp")
            if mlp.kind == "moe":
                gemm("moe.router", count, mlp.num_experts, h, "router")
        gemm("lm_head", 1, m.vocab_size / tp, h, "lm_head", sampled=True)
        gemm_ops = [_Gemm(name, layers, n, k, s, kind) for (name, n, k, s, kind), layers in gemms.items()]
        attn_ops = []
        if not has_mla and "context_attention" in self.kernels and "generation_attention" in self.kernels:
            attn_ops = [_Attn(layers, *key) for key, layers in attn.items()]
        return gemm_ops, attn_ops, bool(self.roof.allreduces) and "allreduce" in self.kernels

    def _mla_ops(self, mla: Mapping[str, MlaConstants], step_phase: str) -> list[_Op]:
        """The MLA operators of every MLA layer with fitted constants (module docstring): each
        phase-specific operator by its phase, the shared projections by `step_phase`."""
        roof, dev = self.roof, self.device
        cs, ms = self.coef.compute_scale, self.coef.memory_scale
        compute = self._compute["attention"]
        ops = []
        for layer, count in self.model.layer_groups:
            if layer.attention.kind != "mla":
                continue
            for op in mla_ops(layer.attention, self.model.hidden_size, self.tp, weight_bytes=roof.wb["attention"],
                              kv_bytes=dtype_bytes(self.kv_dtype), act_bytes=roof.act_bytes):
                c = mla[OP_PHASE.get(op.name, step_phase)]
                if op.kind == "gemm":
                    peak = dev.peak_flops(compute) * (c.gemm_fp8 if compute == "fp8" else c.gemm) * cs
                else:
                    peak = dev.peak_flops("bf16") * c.attention * cs
                ops.append(_Op(op.name, count, peak, dev.mem_bandwidth * c.memory * ms, c.fixed_s,
                               tuple(sorted((_MLA_AGG[k], v) for k, v in op.flops.items())), op.weight_bytes,
                               tuple(sorted((_MLA_AGG[k], v) for k, v in op.bytes.items()))))
        return ops

    def _scale(self, c: np.ndarray, mem: np.ndarray) -> np.ndarray:
        """Factor applied to a kernel of ideal compute time `c` and memory time `mem`."""
        cs, ms = self.coef.compute_scale, self.coef.memory_scale
        if cs == 1.0 and ms == 1.0:
            return np.ones_like(c)
        ideal = np.maximum(np.maximum(c, mem), 1e-300)
        return np.maximum(c / cs, mem / ms) / ideal

    # ------------------------------------------------------------------ GEMM tables
    def _gemm_bytes(self, m, n: float, k: float, kind: str):
        """Bytes of [m × k] @ [k × n] of a `kind` module: activations in its compute dtype, weights
        in their stored dtype, 16-bit out."""
        ab_in = dtype_bytes(self._compute[kind])
        return m * k * ab_in + k * n * self.roof.wb[kind] + m * n * 2.0

    def gemm_seconds(self, m: np.ndarray, n: float, k: float, kind: str) -> np.ndarray:
        """Seconds of one [m × k] @ [k × n] weight GEMM of a `kind` module of this replica, for an
        array of m."""
        m = np.asarray(m, dtype=np.float64)
        flops = 2.0 * m * n * k
        nbytes = self._gemm_bytes(m, n, k, kind)
        c = flops / self.device.peak_flops(self._compute[kind])
        mem = nbytes / self.device.mem_bandwidth
        fit = self.kernels["gemm"]
        grid = fit.group_for({"gemm_dtype": self._groups[kind]})
        pts = np.column_stack([np.maximum(m, 1.0), np.full(len(m), float(n)), np.full(len(m), float(k))])
        eff = np.exp(grid.query(pts))
        return np.maximum(c, mem) / eff * self._scale(c, mem)

    def _extend(self, cap: int) -> None:
        """Tabulate the GEMM seconds of every token count 0..cap (tokens and sampled rows)."""
        cap = int(cap)
        m = np.arange(cap + 1, dtype=np.float64)
        tok = np.zeros(cap + 1)
        samp = np.zeros(cap + 1)
        tables = []
        for g in self._gemms:
            t = np.zeros(cap + 1)
            t[1:] = g.layers * self.gemm_seconds(m[1:], g.n, g.k, g.kind)
            tables.append(t)
            if g.sampled:
                samp += t
            else:
                tok += t
        self._tok, self._samp, self._gemm_tab = tok, samp, tables

    def _gemm_total(self, tokens: int, sampled: int) -> float:
        top = max(tokens, sampled)
        if top >= len(self._tok):
            self._extend(max(2 * (len(self._tok) - 1), top))
        return float(self._tok[tokens] + self._samp[sampled])

    # ------------------------------------------------------------------ attention
    def _attn_grid(self, kind: str, window: int | None) -> Grid:
        key = (kind, window or 0)
        grid = self._grids.get(key)
        if grid is None:
            category = {"kv_cache_dtype": table_dtype(self.kv_dtype), "window_size": str(window or 0)}
            grid = self._grids[key] = self.kernels[kind].group_for(category)
        return grid

    def _ctx_table(self, a: _Attn) -> _Table2D:
        """ln e of context attention for this group over (batch, length): the grid's own nodes."""
        table = self._ctx_tables.get(a)
        if table is None:
            grid = self._attn_grid("context_attention", a.window)
            table = self._ctx_tables[a] = _Table2D.from_grid(
                grid, {"num_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": a.head_dim})
        return table

    def _scale_one(self, c: float, mem: float) -> float:
        cs, ms = self.coef.compute_scale, self.coef.memory_scale
        if cs == 1.0 and ms == 1.0:
            return 1.0
        ideal = max(c, mem, 1e-300)
        return max(c / cs, mem / ms) / ideal

    def _prefill_attention(self, chunks: int, pairs: float, pairs_w: float, new_tokens: float,
                           kv_read: float, kv_read_w: float) -> list[tuple[_Attn, float, float, float]]:
        """(op, seconds, flops, bytes) of prefill attention per GQA group (all its layers)."""
        out = []
        if not chunks or not self._attn:
            return out
        kvb = dtype_bytes(self.kv_dtype)
        peak, bw = self.device.peak_flops("bf16"), self.device.mem_bandwidth
        for a in self._attn:
            p, kv_r = (pairs_w, kv_read_w) if a.window else (pairs, kv_read)
            flops = 4.0 * a.heads * a.head_dim * p
            nbytes = 4.0 * a.heads * a.head_dim * new_tokens + a.values_per_token * kvb * (new_tokens + kv_r)
            mean_pairs = p / chunks
            isl = max(1.0, (math.sqrt(8.0 * mean_pairs + 1.0) - 1.0) / 2.0)
            eff = math.exp(self._ctx_table(a)(chunks, isl))
            c, mem = flops / peak, nbytes / bw
            seconds = max(c, mem) / eff * self._scale_one(c, mem)
            out.append((a, a.layers * seconds, a.layers * flops, a.layers * nbytes))
        return out

    def _decode_pl(self, n: int) -> tuple[list[float], list[float]]:
        """Knots (mean context) and seconds of decode attention (all GQA layers) for `n` decodes."""
        cached = self._dec_pl.get(n)
        if cached is not None:
            return cached
        top = max(self.model.max_position_embeddings, 1 << 17)
        octaves = math.ceil(math.log2(top))
        knots = set(np.round(2.0 ** (np.arange(octaves * KNOTS_PER_OCTAVE + 1) / KNOTS_PER_OCTAVE), 6))
        for a in self._attn:
            if a.window:
                knots.add(float(a.window))
        x = np.array(sorted(knots))
        y = np.zeros(len(x))
        kvb = dtype_bytes(self.kv_dtype)
        peak, bw = self.device.peak_flops("bf16"), self.device.mem_bandwidth
        for a in self._attn:
            ctx = np.minimum(x, a.window) if a.window else x
            flops = 4.0 * a.heads * a.head_dim * ctx * n
            nbytes = a.values_per_token * kvb * ctx * n + 4.0 * a.heads * a.head_dim * n
            grid = self._attn_grid("generation_attention", a.window)
            pts = np.column_stack([np.full(len(x), float(n)), ctx, np.full(len(x), a.heads),
                                   np.full(len(x), a.kv_heads), np.full(len(x), a.head_dim)])
            eff = np.exp(grid.query(pts))
            c, mem = flops / peak, nbytes / bw
            y += a.layers * np.maximum(c, mem) / eff * self._scale(c, mem)
        result = (x.tolist(), y.tolist())
        if len(self._dec_pl) > 4096:
            self._dec_pl.clear()
        self._dec_pl[n] = result
        return result

    def _decode_attention(self, n: int, mean_ctx: float) -> float:
        """Decode attention seconds (all GQA layers) of `n` decodes at mean context `mean_ctx`."""
        if not n or not self._attn:
            return 0.0
        x, y = self._decode_pl(n)
        return _pl_eval(x, y, mean_ctx)

    # ------------------------------------------------------------------ remaining (roofline) ops
    def _rest_ops(self, agg: list[float]) -> list[_Op]:
        """The remaining operators of a step with aggregates `agg`."""
        return self.rest_prefill if agg[PF_TOKENS] else self.rest

    def _rest_seconds(self, agg: list[float]) -> float:
        return ops_seconds(self._rest_ops(agg), agg)

    def _allreduce_seconds(self, tokens: float) -> float:
        """All-reduce seconds of a step (the roofline's `allreduces_of` layout): from the table fit
        if there is one, else `perf.comm`."""
        if not self._allreduce:
            return self.roof.allreduce_seconds(tokens)
        if not tokens:
            return 0.0
        fit = self.kernels["allreduce"]
        row = self.model.hidden_size * self.roof.act_bytes
        return sum(ar.blocks * float(fit.seconds(self.device, {"message_size": np.array([ar.token_scale * tokens * row])},
                                                 {"num_gpus": ar.gpus})[0])
                   for ar in self.roof.allreduces)

    # ------------------------------------------------------------------ public interface
    def pp_send_seconds(self, tokens: int) -> float:
        """One stage-to-stage send (the roofline's "pp.send_recv" operator, not refitted)."""
        return self.roof.pp_send_seconds(tokens)

    def seconds(self, shape: StepShape) -> float:
        agg = self.roof.aggregates(shape)
        tokens, sampled = int(agg[TOKENS]), int(agg[SAMPLED])
        total = self.coef.step_overhead_s + self.coef.token_overhead_s * shape.num_tokens
        total += self._gemm_total(tokens, sampled) if self._gemms else 0.0
        total += self._rest_seconds(agg)
        total += self._allreduce_seconds(tokens)
        if self._attn:
            for _, sec, _, _ in self._prefill_attention(len(shape.prefill), agg[PF_PAIRS], agg[PF_PAIRS_W],
                                                        agg[PF_TOKENS], agg[PF_KV], agg[PF_KV_W]):
                total += sec
            n = len(shape.decode)
            if n:
                total += self._decode_attention(n, agg[DEC_KV] / n)
        return total

    def step_time(self, shape: StepShape) -> StepTime:
        agg = self.roof.aggregates(shape)
        tokens, sampled = int(agg[TOKENS]), int(agg[SAMPLED])
        ops: list[OpTime] = []
        if self._gemms:
            self._gemm_total(tokens, sampled)
            by_name: dict[str, list[float]] = {}
            for g, table in zip(self._gemms, self._gemm_tab, strict=True):
                m = sampled if g.sampled else tokens
                if not m:
                    continue
                sec = float(table[m])
                flops = g.layers * 2.0 * m * g.n * g.k
                nbytes = g.layers * self._gemm_bytes(m, g.n, g.k, g.kind)
                acc = by_name.setdefault(g.name, [0.0, 0.0, 0.0])
                acc[0] += sec
                acc[1] += flops
                acc[2] += nbytes
            for name, (sec, flops, nbytes) in by_name.items():
                ops.append(OpTime(name, sec, flops, nbytes, self._bound(flops, nbytes)))
        for op in self._rest_ops(agg):
            flops = sum(c * agg[i] for i, c in op.flops)
            nbytes = sum(c * agg[i] for i, c in op.bytes)
            if not flops and not nbytes:
                continue  # the operator does not run in this step (as `ops_seconds`)
            nbytes += op.bytes_base
            t_c = flops / op.peak if op.peak else 0.0
            t_m = nbytes / op.bandwidth if op.bandwidth else 0.0
            seconds = op.layers * (op.fixed + max(t_c, t_m))
            if not seconds:
                continue
            bound: Bound = ("compute" if t_c >= t_m and flops
                            else op.bound_if_memory if nbytes else "overhead")
            ops.append(OpTime(op.name, seconds, op.layers * flops, op.layers * nbytes, bound))
        if self.roof.allreduces and tokens:
            ops.append(OpTime("tp.allreduce", self._allreduce_seconds(tokens), 0.0, self.roof.allreduce_bytes(tokens),
                              "comm"))
        if self._attn:
            pf = self._prefill_attention(len(shape.prefill), agg[PF_PAIRS], agg[PF_PAIRS_W], agg[PF_TOKENS],
                                         agg[PF_KV], agg[PF_KV_W])
            if pf:
                sec = sum(p[1] for p in pf)
                flops = sum(p[2] for p in pf)
                nbytes = sum(p[3] for p in pf)
                ops.append(OpTime("attn.prefill", sec, flops, nbytes, self._bound(flops, nbytes)))
            n = len(shape.decode)
            if n:
                mean = agg[DEC_KV] / n
                sec = self._decode_attention(n, mean)
                kvb = dtype_bytes(self.kv_dtype)
                flops = nbytes = 0.0
                for a in self._attn:
                    ctx = min(mean, a.window) if a.window else mean
                    flops += a.layers * 4.0 * a.heads * a.head_dim * ctx * n
                    nbytes += a.layers * (a.values_per_token * kvb * ctx * n + 4.0 * a.heads * a.head_dim * n)
                ops.append(OpTime("attn.decode", sec, flops, nbytes, self._bound(flops, nbytes)))
        if self.coef.step_overhead_s:
            ops.append(OpTime("step.overhead", self.coef.step_overhead_s, 0.0, 0.0, "overhead"))
        if self.coef.token_overhead_s and shape.num_tokens:
            ops.append(OpTime("token.overhead", self.coef.token_overhead_s * shape.num_tokens, 0.0, 0.0, "overhead"))
        return StepTime(sum(op.seconds for op in ops), tuple(ops))

    def _bound(self, flops: float, nbytes: float) -> Bound:
        return "compute" if flops / self.device.peak_flops(self.compute_dtype) >= \
            nbytes / self.device.mem_bandwidth else "memory"

    # ------------------------------------------------------------------ decode fast path
    def _decode_const(self, n: int) -> float:
        """Seconds of a decode iteration of n sequences that do not depend on the context."""
        cached = self._n_const.get(n)
        if cached is None:
            cached = self.coef.step_overhead_s + self.coef.token_overhead_s * n
            padded = int(cudagraph_tokens(n, self.roof.eff.cudagraph_max_tokens))
            if self._gemms:
                cached += self._gemm_total(padded, n)
            cached += self._allreduce_seconds(padded)
            self._n_const[n] = cached
        return cached

    def decode_seconds(self, n: int, context_sum: int) -> float:
        if n <= 0:
            return 0.0
        key = (n, context_sum)
        cached = self._dec_cache.get(key)
        if cached is None:
            agg = self.roof._decode_aggregates(n, context_sum)
            cached = self._decode_const(n) + self._rest_seconds(agg)
            if self._attn:
                cached += self._decode_attention(n, context_sum / n)
            if len(self._dec_cache) > 200_000:
                self._dec_cache.clear()
            self._dec_cache[key] = cached
        return cached

    def decode_run_seconds(self, n: int, context_sum: int, k: int) -> float:
        """Closed-form sum of k decode iterations (mean context grows by one token per iteration)."""
        if k <= 0 or n <= 0:
            return 0.0
        total = k * self._decode_const(n)
        for lo, hi, start, slope in self.roof._decode_segments(n, context_sum, k):
            for op in self.rest:
                total += op.layers * _sum_max_lines(op, start, slope, lo, hi)
        if self._attn:
            x, y = self._decode_pl(n)
            total += _pl_sum(x, y, context_sum / n, k)
        return total


class _Table2D:
    """Bilinear interpolation in (ln x, ln y) with clamping, in pure Python: the scalar fast path.

    Built on a grid's own nodes along the two free axes with the other axes fixed, it equals the
    grid's multilinear query exactly (multilinear interpolation is separable). One prefill step asks
    for one (batch, length) point per attention group: here under 1 µs, where `Grid.query`
    (`RegularGridInterpolator`, made for arrays of points) takes ~280 µs for a single point.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, values: np.ndarray) -> None:
        self.lx = np.log(xs).tolist()
        self.ly = np.log(ys).tolist()
        self.v = values.tolist()

    @classmethod
    def from_grid(cls, grid: Grid, fixed: Mapping[str, float]) -> _Table2D:
        free = [i for i, name in enumerate(grid.axes) if name not in fixed]
        xs, ys = grid.values[free[0]], grid.values[free[1]]
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        cols = []
        for i, name in enumerate(grid.axes):
            if i == free[0]:
                cols.append(gx.ravel())
            elif i == free[1]:
                cols.append(gy.ravel())
            else:
                cols.append(np.full(gx.size, float(fixed[name])))
        values = grid.query(np.column_stack(cols)).reshape(len(xs), len(ys))
        return cls(xs, ys, values)

    @staticmethod
    def _locate(axis: list[float], x: float) -> tuple[int, int, float]:
        if len(axis) == 1 or x <= axis[0]:
            return 0, 0, 0.0
        if x >= axis[-1]:
            return len(axis) - 1, len(axis) - 1, 0.0
        hi = bisect.bisect_right(axis, x)
        lo = hi - 1
        return lo, hi, (x - axis[lo]) / (axis[hi] - axis[lo])

    def __call__(self, x: float, y: float) -> float:
        i0, i1, fx = self._locate(self.lx, math.log(x))
        j0, j1, fy = self._locate(self.ly, math.log(y))
        v = self.v
        return ((1 - fx) * ((1 - fy) * v[i0][j0] + fy * v[i0][j1])
                + fx * ((1 - fy) * v[i1][j0] + fy * v[i1][j1]))


# ---------------------------------------------------------------------- piecewise-linear helpers
def _pl_eval(x: list[float], y: list[float], c: float) -> float:
    """Linear interpolation of knots (x, y) at c; constant below x[0], last segment's line beyond."""
    if c <= x[0]:
        return y[0]
    j = bisect.bisect_right(x, c) - 1
    if j >= len(x) - 1:
        j = len(x) - 2
    return y[j] + (y[j + 1] - y[j]) / (x[j + 1] - x[j]) * (c - x[j])


def _pl_sum(x: list[float], y: list[float], c0: float, k: int) -> float:
    """Σ_{i=0}^{k-1} _pl_eval(x, y, c0 + i) in closed form, segment by segment."""
    total = 0.0
    i = 0
    last = len(x) - 2
    while i < k:
        c = c0 + i
        if c <= x[0]:
            # constant region: iterations with c0 + i <= x[0]
            hi = min(k, math.floor(x[0] - c0) + 1)
            total += (hi - i) * y[0]
            i = hi
            continue
        j = min(bisect.bisect_right(x, c) - 1, last)
        slope = (y[j + 1] - y[j]) / (x[j + 1] - x[j])
        if j == last:
            hi = k
        else:
            # iterations with c0 + i < x[j+1]
            hi = min(k, max(i + 1, math.ceil(x[j + 1] - c0)))
        a = y[j] + slope * (c0 - x[j])
        total += _sum_line(a, slope, i, hi)
        i = hi
    return total


def load_step_model(model: str | ModelSpec, device: str | DeviceSpec, *, tp: int = 1, pp: int = 1,
                    weight_dtype: str | None = None, kv_dtype: str | None = None,
                    profile: str | os.PathLike[str] | None = None,
                    layout: ParallelLayout | None = None) -> StepTimeModel:
    """The step-time model `simulate`, `plan` and `estimate` use.

    Without `profile`: the datasheet `Roofline` with default efficiencies. With a profile file
    (see `paretoserve.perf.profile`): `Calibrated` with its kernel fits and coefficients. A
    profile fitted for another device than `device` raises `UserError`.
    """
    from paretoserve.catalog.device import load_device
    from paretoserve.catalog.model import load_model

    spec = load_model(model) if isinstance(model, str) else model
    dev = load_device(device) if isinstance(device, str) else device
    if profile is None:
        return Roofline(spec, dev, tp=tp, pp=pp, weight_dtype=weight_dtype, kv_dtype=kv_dtype, layout=layout)
    prof = load_profile(profile, device=dev.name)
    return Calibrated(spec, dev, tp=tp, pp=pp, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                      kernels=prof.kernels, coefficients=prof.coefficients, layout=layout, mla=prof.mla)
