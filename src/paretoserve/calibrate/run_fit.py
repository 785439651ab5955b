"""End-to-end calibration and validation against a measured run folder (bench or imported vLLM run).

A measured run gives, per request, its arrival, prompt and output tokens and the times of its first
and last token. Replaying the same arrivals and lengths through the simulator with the engine's
settings (model, device, TP, `max_num_seqs`, `max_num_batched_tokens`, KV blocks, prefix caching)
predicts those times; `fit_run` finds the four global `Coefficients` of the step-time model —
compute and memory efficiency scales, a per-iteration and a per-token overhead — that make the
predicted TTFT, TPOT and E2E (mean, p50, p90) match the measured ones on the requests chosen for
fitting: by default the first half by arrival (`DEFAULT_FIT_FRACTION`), the later half held out to
report the error on requests the fit did not see; `fit_fraction` = 1 fits on all. A profile records
the run it was fitted on (`run_fingerprint`) and how many of its requests, so that `validate` can
say when it is shown the same run.

Load generators that cap the requests in flight (`bench --concurrency C`, with a rate: at most C in
flight; alone: a closed loop of C) are replayed with the same cap: each request is sent at its
scheduled time (recorded send time minus the recorded `lag_s`; at once in a closed loop) or, when C
are in flight, when one of them completes in the simulation. Replaying the recorded send times
instead would drop the feedback of the cap: wherever the run was saturated, any error in the
simulated service time would pile up into a growing simulated queue (TTFT off by tens of percent).

The whole trace is always simulated — later arrivals are part of the workload and slow the earlier
requests down by sharing batches — but only the fitting requests' measurements enter the loss:

    loss = Σ_{metric ∈ TTFT, TPOT, E2E} Σ_{stat ∈ mean, p50, p90} ln(predicted / measured)²
           + 0.01 (ln s_compute)² + 0.01 (ln s_memory)²

minimised by Nelder–Mead (`scipy.optimize.minimize`) over (ln s_compute, ln s_memory,
√(overhead / 1 ms), √(token overhead / 1 µs)) from the datasheet values, then from the best point
again (a restart), at most a few hundred simulations (each a few tens of milliseconds for a few hundred requests).

What the latencies identify: prefill work (TTFT) pins the compute scale; the per-iteration overhead
and the memory scale trade off against each other, since a decode iteration reads the same weights
every time (they separate only through the KV reads that grow with context and batch). The fitted
pair reproduces the latencies; the split between them is only as good as the run's spread of batch
sizes and contexts (the small ridge picks the pair closest to the datasheet).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.dtypes import normalize_dtype
from paretoserve.catalog.model import ModelSpec, load_model
from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.perf.calibrated import Calibrated, Coefficients
from paretoserve.runs import Run
from paretoserve.workload.request import Request

METRICS = ("ttft", "tpot", "e2e")
STATS = ("mean", "p50", "p90")
REPORT_STATS = ("mean", "p50", "p90", "p99")
_RIDGE = 0.01
#: Share of a run's requests (the first, by arrival) that `fit_run` fits on; the rest are held out.
DEFAULT_FIT_FRACTION = 0.5


@dataclass
class RunSetup:
    """Everything needed to replay a measured run through the simulator.

    Attributes:
        model: the served model.
        device: the accelerator it ran on.
        tp: tensor-parallel degree; pp: pipeline stages (per replica).
        kv_tokens: KV-cache capacity in tokens (the engine's blocks × block size when recorded).
        block_size: tokens per KV block.
        max_num_seqs: engine cap on running sequences.
        max_num_batched_tokens: engine cap on tokens per iteration.
        prefix_caching: whether the engine reused cached prefixes.
        requests: the requests to replay (arrival order).
        measured: measured records of completed requests with timestamps, by request id.
        notes: where each setting came from.
        max_in_flight: the load generator's cap on requests in flight (None: sent at the recorded
            times).
        scheduled_s: with a cap, when the load generator meant to send each request, by request id.
        replicas: data-parallel engines (vLLM `--data-parallel-size`), each with `kv_tokens`,
            `max_num_seqs` and `max_num_batched_tokens` of its own, behind a least-outstanding
            router (vLLM's DP load balancing sends a request to the engine with the fewest waiting
            and running requests).
        kv_dtype: KV-cache format (None: bf16).
    """

    model: ModelSpec
    device: DeviceSpec
    tp: int
    pp: int
    kv_tokens: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    prefix_caching: bool
    requests: list[Request]
    measured: dict[str, RequestRecord]
    notes: dict[str, str] = field(default_factory=dict)
    max_in_flight: int | None = None
    scheduled_s: dict[str, float] = field(default_factory=dict)
    replicas: int = 1
    kv_dtype: str | None = None

    def settings(self) -> dict[str, Any]:
        """The replay settings, for config files and reports."""
        return {"model": self.model.name, "hardware": self.device.name, "tp": self.tp, "pp": self.pp,
                "dp": self.replicas, "kv_dtype": self.kv_dtype or "bf16",
                "kv_tokens": self.kv_tokens, "block_size": self.block_size, "max_num_seqs": self.max_num_seqs,
                "max_num_batched_tokens": self.max_num_batched_tokens, "prefix_caching": self.prefix_caching}


def _engine_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Engine settings recorded in a run's config.yaml (imported vLLM run, simulate run, or bench)."""
    if isinstance(config.get("engine"), dict):  # import-vllm
        e = config["engine"]
        kv = None
        if type(e.get("num_gpu_blocks")) is int and type(e.get("block_size")) is int:
            kv = e["num_gpu_blocks"] * e["block_size"]
        return {"model": e.get("model"), "hardware": e.get("device_name"), "tp": e.get("tp"), "pp": e.get("pp"),
                "dp": e.get("dp"), "expert_parallel": e.get("expert_parallel"),
                "kv_dtype": e.get("kv_cache_dtype"), "max_num_seqs": e.get("max_num_seqs"),
                "max_num_batched_tokens": e.get("max_num_batched_tokens"),
                "block_size": e.get("block_size"), "prefix_caching": e.get("enable_prefix_caching"),
                "kv_tokens": kv}
    if isinstance(config.get("simulate"), dict):  # a simulated run
        s = config["simulate"]
        derived = (config.get("derived") or {}).get("replica") or {}
        return {"model": s.get("model"), "hardware": s.get("hardware"), "tp": s.get("tp"), "pp": s.get("pp"),
                "dp": s.get("replicas"), "kv_dtype": s.get("kv_dtype"),
                "max_num_seqs": s.get("max_num_seqs"),
                "max_num_batched_tokens": s.get("max_num_batched_tokens"),
                "block_size": s.get("block_size"), "prefix_caching": s.get("prefix_caching"),
                "kv_tokens": s.get("kv_tokens") or derived.get("kv_tokens")}
    engine = config.get("engine_settings") if isinstance(config.get("engine_settings"), dict) else {}
    return {"model": engine.get("model", config.get("model")), "hardware": engine.get("hardware"),
            **{k: engine.get(k) for k in ("tp", "pp", "max_num_seqs", "max_num_batched_tokens", "block_size",
                                          "prefix_caching", "kv_tokens")}}


def _client_cap(config: dict[str, Any]) -> tuple[int | None, bool]:
    """(cap on requests in flight, closed loop) of the load generator that measured a bench run."""
    cap = config.get("concurrency") if config.get("command") == "bench" else None
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        return None, False
    closed = all(config.get(k) is None for k in ("rate", "rate_scale", "arrival"))
    return cap, closed


def run_setup(run: Run, *, model: str | None = None, hardware: str | None = None, tp: int | None = None,
              pp: int | None = None, max_num_seqs: int | None = None,
              max_num_batched_tokens: int | None = None, kv_tokens: int | None = None,
              block_size: int | None = None, prefix_caching: bool | None = None,
              gpu_memory_utilization: float = 0.9, dp: int | None = None,
              expert_parallel: bool | None = None, kv_dtype: str | None = None) -> RunSetup:
    """The replay setup of a measured run; arguments override what the run folder records.

    Raises `UserError` when the run has no completed request with first/last-token timestamps, when
    the model or device is neither recorded nor given, or when the run needs what the latency model
    lacks: expert parallelism on an MoE model (replaying it without would predict another deployment).
    """
    from paretoserve.perf.memory import kv_capacity

    where = str(run.path)
    timed = [r for r in run.records if r.ok and r.first_token_s is not None and r.last_token_s is not None]
    if not timed:
        raise UserError("no completed request has first/last-token timestamps (requests.jsonl needs "
                        "first_token_s and last_token_s to calibrate or validate)", file=where)
    recorded = _engine_settings(run.config)
    notes: dict[str, str] = {}

    def pick(name: str, given: Any, default: Any = None) -> Any:
        if given is not None:
            notes[name] = "given"
            return given
        if recorded.get(name) is not None:
            notes[name] = "run folder"
            return recorded[name]
        notes[name] = "default"
        return default

    model_name = pick("model", model)
    if model_name is None:
        raise UserError("the run folder does not record the model; pass --model", file=where)
    try:  # a bundled name, a config.json path, or a Hugging Face id ("org/Name") of a bundled model
        spec = load_model(str(model_name))
    except UserError:
        raise UserError(f"the run's model '{model_name}' is not in the catalog; pass --model (a bundled name "
                        "or a config.json)", file=where) from None
    hw = pick("hardware", hardware)
    if hw is None:
        raise UserError("the run folder does not record the hardware; pass --hardware", file=where)
    try:
        device = load_device(str(hw))
    except UserError:
        raise UserError(f"the run's device '{hw}' is not in the catalog; pass --hardware",
                        file=where) from None
    def count(name: str, given: int | None, default: int | None = None) -> int | None:
        value = pick(name, given, default)
        if value is not None and (type(value) is not int or value < 1):
            raise UserError(f"expected a positive integer, got {value!r:.40}", file=str(run.path / "config.yaml"),
                            field=name)
        return value

    tp_, pp_, replicas = count("tp", tp, 1), count("pp", pp, 1), count("dp", dp, 1)
    if bool(pick("expert_parallel", expert_parallel, False)) and spec.is_moe:
        raise UserError(f"the run served the MoE model {spec.name} with expert parallelism (EP {tp_ * replicas} = "
                        f"TP {tp_} × DP {replicas}); the latency model has no expert parallelism yet, so it "
                        "cannot replay this run (pass --no-expert-parallel only if the run did not use it)",
                        file=where)
    kv_format = pick("kv_dtype", kv_dtype)
    kv_format = None if kv_format is None else normalize_dtype(str(kv_format))
    seqs = count("max_num_seqs", max_num_seqs, 256)
    batched = count("max_num_batched_tokens", max_num_batched_tokens, 8192)
    block = count("block_size", block_size, 16)
    prefix = bool(pick("prefix_caching", prefix_caching, True))
    kv = count("kv_tokens", kv_tokens)
    if kv is None:
        kv = kv_capacity(spec, device, tp=tp_, pp=pp_, gpu_memory_utilization=gpu_memory_utilization,
                         kv_dtype=kv_format, max_num_batched_tokens=batched, max_num_seqs=seqs).tokens
        notes["kv_tokens"] = f"kv_capacity at gpu_memory_utilization={gpu_memory_utilization}"
    requests = sorted((Request(r.request_id, r.arrival_s, max(1, r.prompt_tokens), max(1, r.output_tokens))
                       for r in timed), key=lambda q: (q.arrival_s, q.request_id))
    cap, closed = _client_cap(run.config)
    scheduled: dict[str, float] = {}
    if cap is not None:
        for r in timed:
            lag = (r.extra or {}).get("lag_s")
            scheduled[r.request_id] = 0.0 if closed else r.arrival_s - float(lag or 0.0)
        notes["max_in_flight"] = f"run folder: {'closed loop of' if closed else 'at most'} {cap} in flight"
    return RunSetup(spec, device, tp_, pp_, int(kv), block, seqs, batched, prefix, requests,
                    {r.request_id: r for r in timed}, notes, cap, scheduled, replicas, kv_format)


def simulate_setup(setup: RunSetup, step_model: Any) -> list[RequestRecord]:
    """Replay the run's requests with `step_model`; one record per request.

    With a cap on requests in flight, the requests go out in their recorded order, each at its
    scheduled time or when a completion frees a slot (`paretoserve.sim.closed_loop.CappedClient`).
    """
    from paretoserve.perf.memory import kv_layout
    from paretoserve.sim.api import simulate

    requests = setup.requests
    if setup.max_in_flight is not None:
        requests = [replace(q, arrival_s=setup.scheduled_s.get(q.request_id, q.arrival_s)) for q in requests]
    sim = simulate(requests, step_model=step_model,
                   kv_tokens=setup.kv_tokens, block_size=setup.block_size, policy="vllm",
                   max_num_seqs=setup.max_num_seqs, max_num_batched_tokens=setup.max_num_batched_tokens,
                   prefix_caching=setup.prefix_caching,
                   max_model_len=max(setup.model.max_position_embeddings,
                                     max(q.prompt_tokens + q.output_tokens for q in setup.requests)),
                   devices=setup.tp * setup.pp, concurrency=setup.max_in_flight, replicas=setup.replicas,
                   router="least_outstanding",
                   kv_layout=kv_layout(setup.model, setup.tp, setup.pp, setup.kv_dtype, setup.block_size))
    return list(sim)


def step_model_for(setup: RunSetup, kernels: dict | None, coefficients: Coefficients) -> Calibrated:
    """The calibrated step model of the run's deployment."""
    return Calibrated(setup.model, setup.device, tp=setup.tp, pp=setup.pp, kv_dtype=setup.kv_dtype,
                      kernels=kernels, coefficients=coefficients)


def _values(records: Iterable[RequestRecord], metric: str, ids: set[str] | None) -> np.ndarray:
    out = [getattr(r, f"{metric}_s") for r in records if r.ok and (ids is None or r.request_id in ids)]
    return np.array([v for v in out if v is not None], dtype=float)


def _stat(values: np.ndarray, stat: str) -> float:
    if not len(values):
        return math.nan
    if stat == "mean":
        return float(values.mean())
    return float(np.percentile(values, float(stat[1:])))


def latency_stats(records: Iterable[RequestRecord], ids: set[str] | None = None,
                  stats: Sequence[str] = REPORT_STATS) -> dict[str, dict[str, float]]:
    """{metric: {stat: seconds}} of TTFT, TPOT, E2E (and ITL where records carry gaps)."""
    records = list(records)
    out = {m: {s: _stat(_values(records, m, ids), s) for s in stats} for m in METRICS}
    gaps = [g for r in records if r.ok and r.itl_s and (ids is None or r.request_id in ids) for g in r.itl_s]
    if gaps:
        out["itl"] = {s: _stat(np.array(gaps, dtype=float), s) for s in stats}
    return out


def run_fingerprint(setup: RunSetup) -> str:
    """Hash of the measured requests a setup replays (ids, arrivals, lengths, token times): the same
    run gives the same fingerprint wherever its folder is, another run a different one."""
    digest = hashlib.sha256()
    for q in setup.requests:
        m = setup.measured[q.request_id]
        digest.update(f"{q.request_id!r},{q.arrival_s!r},{q.prompt_tokens},{q.output_tokens},"
                      f"{m.first_token_s!r},{m.last_token_s!r};".encode())
    return digest.hexdigest()[:16]


def split_ids(setup: RunSetup, fit_fraction: float) -> tuple[set[str], set[str]]:
    """(fit ids, held-out ids): the first `fit_fraction` of the measured requests by arrival."""
    if not 0.0 < fit_fraction <= 1.0:
        raise UserError(f"fit fraction must be in (0, 1], got {fit_fraction}")
    ordered = [q.request_id for q in setup.requests]
    cut = max(1, round(len(ordered) * fit_fraction))
    return set(ordered[:cut]), set(ordered[cut:])


@dataclass
class RunFit:
    """Result of `fit_run`.

    Attributes:
        coefficients: the fitted global coefficients.
        loss: final loss; loss_start: the loss with identity coefficients.
        evaluations: simulations run.
        fit: {metric: {stat: (predicted, measured)}} on the fitting requests.
        heldout: the same on the held-out requests (empty when all were used).
        start: the same on the fitting requests before calibration.
    """

    coefficients: Coefficients
    loss: float
    loss_start: float
    evaluations: int
    fit: dict[str, dict[str, tuple[float, float]]]
    heldout: dict[str, dict[str, tuple[float, float]]]
    start: dict[str, dict[str, tuple[float, float]]]


#: The uncorrected model a run fit starts from: unit scales and no per-iteration or per-token
#: overhead (the default `Coefficients` carry the datasheet model's per-iteration overhead).
IDENTITY = Coefficients(step_overhead_s=0.0)


def _decode(x: np.ndarray) -> Coefficients:
    return Coefficients(compute_scale=float(math.exp(x[0])), memory_scale=float(math.exp(x[1])),
                        step_overhead_s=float(x[2] ** 2 * 1e-3), token_overhead_s=float(x[3] ** 2 * 1e-6))


def _encode(c: Coefficients) -> np.ndarray:
    return np.array([math.log(c.compute_scale), math.log(c.memory_scale), math.sqrt(c.step_overhead_s / 1e-3),
                     math.sqrt(c.token_overhead_s / 1e-6)])


def _pairs(pred: dict, meas: dict) -> dict[str, dict[str, tuple[float, float]]]:
    return {m: {s: (pred[m][s], meas[m][s]) for s in meas[m]} for m in meas if m in pred}


def fit_run(setup: RunSetup, *, kernels: dict | None = None, start: Coefficients | None = None,
            fit_fraction: float = DEFAULT_FIT_FRACTION, max_evaluations: int = 400,
            progress: Callable[[int, float], None] | None = None) -> RunFit:
    """Fit the global coefficients to the run (see the module docstring)."""
    fit_ids, held_ids = split_ids(setup, fit_fraction)
    measured = list(setup.measured.values())
    meas_fit = latency_stats(measured, fit_ids, STATS)
    targets = [(m, s, meas_fit[m][s]) for m in METRICS for s in STATS
               if math.isfinite(meas_fit[m][s]) and meas_fit[m][s] > 0]
    if not targets:
        raise UserError("the fitting requests have no positive TTFT/TPOT/E2E to fit")
    cache: dict[tuple[float, ...], float] = {}
    evaluations = 0

    def loss(x: np.ndarray) -> float:
        nonlocal evaluations
        key = tuple(np.round(x, 12))
        if key in cache:
            return cache[key]
        evaluations += 1
        records = simulate_setup(setup, step_model_for(setup, kernels, _decode(x)))
        pred = latency_stats(records, fit_ids, STATS)
        total = _RIDGE * (x[0] ** 2 + x[1] ** 2)
        for m, s, value in targets:
            p = pred[m][s]
            total += (math.log(p / value) if p > 0 and math.isfinite(p) else 10.0) ** 2
        cache[key] = total
        if progress is not None:
            progress(evaluations, total)
        return total

    start = start or IDENTITY
    x0 = _encode(start)
    x0[2:] = np.maximum(x0[2:], 0.3)  # a small overhead to start from (the square has no slope at 0)
    loss_start = loss(_encode(start))
    best = _nelder_mead(loss, x0, step=0.5, max_evaluations=max_evaluations // 2)
    best = _nelder_mead(loss, best, step=0.15, max_evaluations=max_evaluations - max_evaluations // 2)
    coefficients = _decode(best)
    final = simulate_setup(setup, step_model_for(setup, kernels, coefficients))
    first = simulate_setup(setup, step_model_for(setup, kernels, start))
    heldout = {}
    if held_ids:
        heldout = _pairs(latency_stats(final, held_ids), latency_stats(measured, held_ids))
    return RunFit(coefficients, loss(best), loss_start, evaluations,
                  _pairs(latency_stats(final, fit_ids), latency_stats(measured, fit_ids)), heldout,
                  _pairs(latency_stats(first, fit_ids), latency_stats(measured, fit_ids)))


def _nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, *, step: float,
                 max_evaluations: int, tol: float = 1e-7) -> np.ndarray:
    """Minimise `f` from the simplex x0, x0 + step·e_i (`scipy.optimize.minimize`, Nelder–Mead with
    the standard coefficients) until the simplex's values agree to `tol` or after `max_evaluations`."""
    x0 = np.asarray(x0, dtype=float)
    simplex = np.vstack([x0, x0 + step * np.eye(len(x0))])
    result = minimize(f, x0, method="Nelder-Mead",
                      options={"initial_simplex": simplex, "maxfev": max_evaluations, "fatol": tol,
                               "xatol": math.inf})
    return result.x


def compare_table(pred: Iterable[RequestRecord], measured: Iterable[RequestRecord],
                  ids: set[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """{metric: {stat: (predicted, measured)}} in seconds, for TTFT/TPOT/ITL/E2E × mean/p50/p90/p99."""
    return _pairs(latency_stats(pred, ids), latency_stats(measured, ids))
