"""Evaluation units: the simulations a plan search needs, each a capacity search on one engine.

A plan's figures are assembled from units shared between plans (DistServe's decomposition):

- ``serve`` — an aggregated engine: the highest rate of the user's trace at which one replica meets
  the SLO (with attention-DP, one rank of it: its own scheduler and KV cache, its MoE layers priced
  on the tokens of all ranks, as `simulate --dp-attention` does; the instance serves dp_attention ×
  that rate); data-parallel replicas behind the router scale it (the router is assumed to split load
  evenly — the recommended plan is re-checked with a full cluster simulation).
- ``prefill`` — a prefill-pool engine: requests stop after their first token, and each request's TTFT
  is charged the KV transfer to the decode pool (bytes / link bandwidth + latency); only TTFT (and
  E2E, if given) is checked.
- ``decode`` — a decode-pool engine: requests arrive with their prompt's KV already transferred
  (their prefill costs no engine time but their KV occupies memory); only TPOT is checked.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace

from paretoserve.metrics.slo import Slo
from paretoserve.metrics.summary import SummaryBuilder
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.shape import PrefillChunk, StepShape, StepTime
from paretoserve.plan.capacity import max_rate_under_slo
from paretoserve.plan.space import Engine
from paretoserve.sim.api import simulate
from paretoserve.sim.config import EngineConfig
from paretoserve.sim.deployment import build_deployment
from paretoserve.sim.energy import energy_joules
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.request import Request
from paretoserve.workload.synthetic import rescale

#: Seconds charged to an iteration that only computes prompt tokens on a decode-pool engine.
_NEGLIGIBLE_S = 1e-6
#: Version of the unit evaluation, part of the resume fingerprint: results of an older version
#: (2: repeated trace copies get fresh prefix hashes) are not reused.
_UNIT_VERSION = 2


@dataclass(frozen=True, slots=True)
class Unit:
    """One capacity search: `kind` in serve / prefill / decode, on `engine`; `link` is the KV
    link (bytes/s, seconds) a prefill unit charges."""

    kind: str
    engine: Engine
    link: tuple[float, float] | None = None

    @property
    def key(self) -> str:
        """Stable identifier (for the resume file)."""
        e = self.engine
        link = "" if self.link is None else f"|link={self.link[0]:.4g},{self.link[1]:.3g}"
        moe = (f"|dpa{e.dp_attention}" if e.dp_attention > 1 else "") + (f"|ep{e.ep}" if e.ep > 1 else "")
        return (f"{self.kind}|{e.device}|tp{e.tp}|pp{e.pp}{moe}|seqs{e.max_num_seqs}|mbt{e.max_num_batched_tokens}"
                f"|w{e.weight_dtype}|kv{e.kv_dtype}|{e.policy}{link}")


@dataclass(frozen=True, slots=True)
class UnitResult:
    """Figures of one unit at its capacity (the highest rate meeting the SLO; zeros when none; of one
    attention-DP rank when the engine has several).

    Seconds for latencies, requests/s for rates, joules per request for energy; tokens per
    completed request.
    """

    key: str
    capacity_rps: float
    attainment: float
    ttft_p90_s: float | None
    tpot_p90_s: float | None
    e2e_p90_s: float | None
    output_tokens_per_request: float
    input_tokens_per_request: float
    joules_per_request: float
    evaluations: int
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class UnitContext:
    """What every unit evaluation shares: the model, the trace sample, the SLO and settings."""

    model: str
    requests: tuple[Request, ...]
    slo: Slo
    gpu_memory_utilization: float = 0.9
    rel_tol: float = 0.03
    max_evals: int = 14
    min_span_s: float = 20.0
    profiles: tuple[tuple[str, str], ...] = ()  # (device, calibrated profile file) pairs

    @property
    def fingerprint(self) -> str:
        """Hash of everything a unit's result depends on besides the unit (for resuming)."""
        digest = hashlib.sha1(repr((_UNIT_VERSION, self.model, str(self.slo), self.gpu_memory_utilization,
                                    self.rel_tol, self.max_evals, self.min_span_s, self.profiles)).encode())
        for r in self.requests:
            digest.update(f"{r.arrival_s!r},{r.prompt_tokens},{r.output_tokens};".encode())
        return digest.hexdigest()[:16]


class DecodeOnly(StepTimeModel):
    """A decode-pool engine's view of time: prompt tokens arrive as transferred KV (no compute)."""

    def __init__(self, inner: StepTimeModel) -> None:
        self.inner = inner

    def step_time(self, shape: StepShape) -> StepTime:
        if not shape.decode:
            return StepTime(_NEGLIGIBLE_S)
        return self.inner.step_time(StepShape(decode=shape.decode))

    def seconds(self, shape: StepShape) -> float:
        if not shape.decode:
            return _NEGLIGIBLE_S
        return self.inner.decode_seconds(len(shape.decode), sum(shape.decode))

    def decode_seconds(self, n: int, context_sum: int) -> float:
        return self.inner.decode_seconds(n, context_sum)

    def decode_run_seconds(self, n: int, context_sum: int, k: int) -> float:
        return self.inner.decode_run_seconds(n, context_sum, k)


def simulate_config(model: str, engine: Engine, gpu_memory_utilization: float, **extra: object) -> SimulateConfig:
    """The `SimulateConfig` of one engine (also the basis of the reproduce command)."""
    return SimulateConfig(model=model, hardware=engine.device, tp=engine.tp, pp=engine.pp,
                          dp_attention=engine.dp_attention, ep=engine.ep,
                          max_num_seqs=engine.max_num_seqs,
                          max_num_batched_tokens=engine.max_num_batched_tokens,
                          weight_dtype=engine.weight_dtype, kv_dtype=engine.kv_dtype, policy=engine.policy,
                          gpu_memory_utilization=gpu_memory_utilization, **extra)


def evaluate_unit(unit: Unit, ctx: UnitContext) -> UnitResult:
    """Capacity search for one unit (bisection on the simulator over the rescaled trace)."""
    profile = dict(ctx.profiles).get(unit.engine.device)
    deployment = build_deployment(simulate_config(ctx.model, unit.engine, ctx.gpu_memory_utilization,
                                                  profile=profile))
    assert deployment.engine is not None
    engine = deployment.engine
    requests = list(ctx.requests)
    if unit.kind == "prefill":
        requests = [replace(r, output_tokens=1) for r in requests]
    elif unit.kind == "decode":
        engine = replace(engine, step_model=DecodeOnly(engine.step_model), prefix_caching=False)
    checks = {"serve": ("ttft", "tpot", "e2e"), "prefill": ("ttft", "e2e"), "decode": ("tpot",)}[unit.kind]
    transfer = _transfer(unit, engine) if unit.kind == "prefill" else None
    device = deployment.device
    best: dict[str, object] = {}

    def attainment_at(rate: float) -> float:
        trace = cover_span(rescale(requests, rate=rate), ctx.min_span_s)
        run = _run_once(trace, engine, ctx.slo, checks, transfer, unit.kind == "decode")
        if run["attainment"] >= ctx.slo.attainment_target and rate >= float(best.get("rate", 0.0)):
            best.update(run, rate=rate, energy=energy_joules(run["stats"], device))
        return float(run["attainment"])

    upper = _throughput_bound(requests, engine)
    cap = max_rate_under_slo(attainment_at, target=ctx.slo.attainment_target, low=upper / 64, high=upper / 8,
                             rel_tol=ctx.rel_tol, max_evals=ctx.max_evals)
    if not best:
        return UnitResult(unit.key, 0.0, cap.attainment, None, None, None, 0.0, 0.0, 0.0, cap.evaluations,
                          "SLO not met even at a low rate")
    summary = best["summary"]
    completed = max(1, summary.completed)
    return UnitResult(unit.key, cap.rate_rps, cap.attainment, summary.ttft.p90, summary.tpot.p90,
                      summary.e2e.p90, summary.output_tokens / completed, summary.input_tokens / completed,
                      float(best["energy"]) / completed, cap.evaluations)


def _run_once(trace: list[Request], engine: EngineConfig, slo: Slo, checks: tuple[str, ...],
              transfer: tuple[float, float] | None, decode_pool: bool) -> dict[str, object]:
    """Simulate `trace` on one engine; SLO attainment over the checked metrics.

    On a decode pool a request's TPOT runs from its arrival (its first token came from the
    prefill pool), so waiting for decode-side KV memory counts against TPOT, as users see it.
    """
    builder = SummaryBuilder()
    sim = simulate(trace, step_model=engine.step_model, kv_tokens=engine.kv_tokens, block_size=engine.block_size,
                   policy=engine.policy, max_num_seqs=engine.max_num_seqs,
                   max_num_batched_tokens=engine.max_num_batched_tokens, prefix_caching=engine.prefix_caching,
                   kv_bytes_per_token=engine.kv_bytes_per_token, max_model_len=engine.max_model_len,
                   devices=engine.devices, on_itl=builder.add_itl, kv_layout=engine.kv_layout)
    thresholds = {m: slo.threshold_s(m) for m in checks}
    allowed_misses = math.floor((1.0 - slo.attainment_target) * len(trace) + 1e-9)
    ok = misses = 0
    waits: list[tuple[float, float]] = []
    for record in sim:
        if record.scheduled_s is not None:
            waits.append((record.arrival_s, record.scheduled_s - record.arrival_s))
        if record.first_token_s is not None:
            if transfer is not None:  # prefill pool: the user sees the first token once its KV arrived
                shift = record.prompt_tokens * transfer[0] + transfer[1]
                record.first_token_s += shift
                record.last_token_s = (record.last_token_s or record.first_token_s) + shift
            elif decode_pool:  # decode pool: the first token was delivered by the prefill pool
                record.first_token_s = record.arrival_s
        builder.add(record)
        if _meets(record, thresholds):
            ok += 1
        else:
            misses += 1
            if misses > allowed_misses:
                break  # the SLO is already lost at this rate: stop simulating
    attainment = ok / len(trace)
    if misses <= allowed_misses and not _stable(waits, slo.threshold_s("ttft") or 1.0):
        attainment = 0.0  # the queue keeps growing: a longer trace would miss the SLO
    return {"attainment": attainment, "summary": builder.finish(), "stats": sim.stats}


def cover_span(trace: list[Request], min_span_s: float) -> list[Request]:
    """Repeat a rescaled trace back to back until its arrivals span at least `min_span_s` seconds.

    At high rates a short sample arrives in a burst that any engine absorbs before its queue shows
    the overload; a long enough span lets a steady state form. Copy c's prefix hashes are shifted
    by c × (the sample's hash range), so a repeat shares prefixes within itself as the sample does
    but never hits the cache entries of another copy (a repeat is a new conversation, not a replay).
    """
    span = trace[-1].arrival_s - trace[0].arrival_s
    if span >= min_span_s or len(trace) < 2:
        return trace
    period = span * len(trace) / (len(trace) - 1)  # keep the mean gap across the seam
    copies = math.ceil(min_span_s / period)
    hashes = [h for r in trace for h in r.prefix_hashes]
    width = max(hashes) - min(hashes) + 1 if hashes else 0
    return [replace(r, request_id=f"{r.request_id}~{c}", arrival_s=r.arrival_s + c * period,
                    prefix_hashes=tuple(h + c * width for h in r.prefix_hashes))
            for c in range(copies) for r in trace]


def _stable(waits: list[tuple[float, float]], tolerance_s: float) -> bool:
    """False when queueing delay grows through the trace (the arrival rate exceeds what the
    engine sustains, which a finite trace can hide): the mean wait of the last third of arrivals
    must stay within twice that of the first third plus `tolerance_s`."""
    if len(waits) < 9:
        return True
    waits.sort()
    third = len(waits) // 3
    first = sum(w for _, w in waits[:third]) / third
    last = sum(w for _, w in waits[-third:]) / third
    return last <= 2.0 * first + tolerance_s


def _meets(record, thresholds: dict[str, float | None]) -> bool:
    if not record.ok:
        return False
    values = {"ttft": record.ttft_s, "tpot": record.tpot_s, "e2e": record.e2e_s}
    return all(limit is None or values[m] is None or values[m] <= limit for m, limit in thresholds.items())


def _transfer(unit: Unit, engine: EngineConfig) -> tuple[float, float]:
    """(seconds per prompt token, fixed seconds) of the KV transfer to the decode pool."""
    assert unit.link is not None
    bandwidth, latency = unit.link
    return engine.kv_bytes_per_token / bandwidth, latency


def _throughput_bound(requests: list[Request], engine: EngineConfig) -> float:
    """An optimistic requests/s the engine could sustain: full-batch roofline service demand."""
    n = len(requests)
    mean_prompt = sum(r.prompt_tokens for r in requests) / n
    mean_output = sum(r.output_tokens for r in requests) / n
    chunk = engine.max_num_batched_tokens
    prefill_per_token = engine.step_model.seconds(StepShape(prefill=(PrefillChunk(chunk, 0, True),))) / chunk
    context = int(mean_prompt + mean_output / 2)
    layout = engine.kv_layout
    fit = (engine.num_blocks // layout.sequence_blocks(max(1, context)) if layout
           else engine.kv_tokens // max(1, context))
    batch = max(1, min(engine.max_num_seqs, fit))
    decode_per_token = engine.step_model.decode_seconds(batch, batch * context) / batch
    demand = mean_prompt * prefill_per_token + mean_output * decode_per_token
    return 1.0 / demand if demand > 0 else 1e6
