"""Predict measured serving points (`paretoserve.calibrate.points`) and summarise the errors.

`predict_point` simulates a supported point as the closed loop it was measured with, by a
`Protocol`. The default, `COLLECTED`, is how the points were collected (engine_facts.md §1, "AIC's
benchmark harness", and aiperf 0.3.0's source where the facts stop):
- client: aiperf `--concurrency C`, a closed loop of C users, every request of exactly ISL prompt
  and OSL output tokens (synthetic lengths with stddev 0, `ignore_eos`), C as `points.map_row`
  derives it;
- warm-up: `--warmup-request-count = 2·C` requests (bench_run.sh.j2), run as their own phase that
  drains before the measured requests start (aiperf `_execute_phases` waits for every warm-up
  credit to return); never summarised;
- measured: `--num-requests = 20·C` (`BENCH_MULTI_ROUND` 20), started by all C users at once
  (aiperf's concurrency-burst issuing has no ramp, delay or think time), each user sending its next
  request when its previous one completes;
- summary: the mean over all 20·C measured requests of TTFT and of per-request TPOT (aiperf's
  statistics are taken across the run's requests: the ramp-up and the drain are inside the mean).
The facts leave open which harness variant produced each row (the Kubernetes one sends 50·C, the
sflow one warms up with C) and the client's own per-request overhead, which is not simulated. No
start offsets or think time are added: the harness passes no concurrency ramp and aiperf has no
think time in this mode, so the users' lock-step start is part of what was measured.

`STEADY` is the plain steady-state closed loop instead: 5·C requests, no warm-up phase, the first
2·C and last C completions left out (`paretoserve.sim.closed_loop.MeasuredWindow`).

An instance with attention-DP N is N engines (one per rank, each with its own scheduler and KV
cache) behind a least-outstanding router — vLLM's DP load balancer picks the rank with the lowest
4 × waiting + running — whose step times price the MoE layers on N× their own tokens
(`paretoserve.perf.roofline`).

`error_summary` gives, per group (model × engine × mode) and overall, the coverage and for TTFT and
TPOT the median and p90 of |error| and the mean signed error, error = (predicted − measured) /
measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from paretoserve.calibrate.points import PointDeployment, Role
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.sim.closed_loop import MeasuredWindow
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.deployment import build_deployment, kv_link
from paretoserve.sim.engine import Simulation
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.request import Request


@dataclass(frozen=True)
class Protocol:
    """How a point's closed loop of C users is run and summarised.

    Attributes:
        warmup_rounds: warm-up requests per user (warm-up = this × C), drained before measuring.
        rounds: measured requests per user (this × C requests).
        steady: leave out the first 2·C and last C measured completions (else all are summarised).
        name: one line for reports.
    """

    warmup_rounds: int
    rounds: int
    steady: bool
    name: str


COLLECTED = Protocol(2, 20, False, "as collected: aiperf, 2C warm-up drained, 20C measured from a "
                                   "simultaneous start, ramp-up and drain in the mean")
STEADY = Protocol(0, 5, True, "steady-state closed loop: 5C requests, first 2C and last C left out")


@dataclass(frozen=True)
class PointPrediction:
    """A point with its predicted means (None when the point is unsupported).

    Attributes:
        point: the deployment.
        ttft_s, tpot_s: predicted mean TTFT and TPOT in seconds, or None.
    """

    point: PointDeployment
    ttft_s: float | None
    tpot_s: float | None

    def error(self, metric: str) -> float | None:
        """(predicted − measured) / measured of "ttft" or "tpot" (None when not predicted)."""
        predicted = getattr(self, f"{metric}_s")
        measured = getattr(self.point, f"measured_{metric}_s")
        return None if predicted is None else predicted / measured - 1.0


def _engine(point: PointDeployment, role: Role, profile: str | None) -> EngineConfig:
    """The engine of one instance of `role`."""
    assert point.model is not None and point.hardware is not None and point.policy is not None
    layout = role.layout(load_model(point.model).is_moe)
    config = SimulateConfig(model=point.model, hardware=point.hardware, tp=role.tp, pp=role.pp,
                            dp_attention=layout.attention_dp, ep=layout.ep,
                            policy=point.policy, policy_options=dict(role.policy_options),
                            max_num_seqs=role.max_num_seqs, max_num_batched_tokens=role.max_num_batched_tokens,
                            block_size=role.block_size, gpu_memory_utilization=role.gpu_memory_utilization,
                            prefix_caching=False,
                            weight_dtype=point.weight_dtype, kv_dtype=point.kv_dtype, profile=profile)
    deployment = build_deployment(config)
    assert deployment.engine is not None
    return deployment.engine


def predict_point(point: PointDeployment, *, profile: str | None = None,
                  protocol: Protocol = COLLECTED) -> PointPrediction:
    """Simulate a supported point by `protocol` (module docstring); an unsupported one comes back
    unpredicted."""
    if point.unsupported is not None:
        return PointPrediction(point, None, None)
    users = point.concurrency
    warmup, measured = users * protocol.warmup_rounds, users * protocol.rounds
    window = MeasuredWindow(users, measured, warmup=warmup, steady=protocol.steady)
    requests = [Request(str(i), 0.0, point.isl, point.osl) for i in range(warmup + measured)]
    if point.mode == "agg":
        (role,) = point.roles
        sim = Simulation(requests, engine=_engine(point, role, profile), replicas=role.attention_dp,
                         router="least_outstanding", concurrency=users, warmup=warmup)
    else:
        prefill_role, decode_role = point.roles
        prefill, decode = _engine(point, prefill_role, profile), _engine(point, decode_role, profile)
        ranks_p = prefill_role.workers * prefill_role.attention_dp
        ranks_d = decode_role.workers * decode_role.attention_dp
        bandwidth, latency, _ = kv_link(load_device(point.hardware or ""), ranks_p, prefill_role.tp,
                                        ranks_d, decode_role.tp, decode_role.pp)
        disagg = DisaggConfig(ranks_p, ranks_d, prefill, decode,
                              kv_bytes_per_token=prefill.kv_bytes_per_token, link_bandwidth=bandwidth,
                              link_latency=latency)
        sim = Simulation(requests, engine=None, disagg=disagg, router="least_outstanding", concurrency=users,
                         warmup=warmup)
    ttft, tpot = [], []
    for record in sim:
        if window.measured(record) and record.ok:
            ttft.append(record.ttft_s)
            if record.tpot_s is not None:
                tpot.append(record.tpot_s)
    return PointPrediction(point, float(np.mean(ttft)) if ttft else None,
                           float(np.mean(tpot)) if tpot else None)


def predict_points(points: Sequence[PointDeployment], *, profile: str | None = None,
                   protocol: Protocol = COLLECTED,
                   progress: Callable[[int], None] | None = None) -> list[PointPrediction]:
    """`predict_point` for every point, in order; `progress(done)` after each."""
    out = []
    for i, point in enumerate(points):
        out.append(predict_point(point, profile=profile, protocol=protocol))
        if progress is not None:
            progress(i + 1)
    return out


def _stats(errors: list[float]) -> dict[str, float | None]:
    if not errors:
        return {"median_abs": None, "p90_abs": None, "mean_signed": None}
    values = np.array(errors, dtype=float)
    return {"median_abs": float(np.median(np.abs(values))), "p90_abs": float(np.percentile(np.abs(values), 90)),
            "mean_signed": float(values.mean())}


def _summary(predictions: list[PointPrediction]) -> dict[str, object]:
    predicted = [p for p in predictions if p.ttft_s is not None]
    out: dict[str, object] = {"rows": len(predictions), "predicted": len(predicted),
                              "coverage": len(predicted) / len(predictions) if predictions else 0.0}
    for metric in ("ttft", "tpot"):
        errors = [e for p in predicted if (e := p.error(metric)) is not None and math.isfinite(e)]
        out[metric] = _stats(errors)
    return out


def error_summary(predictions: Iterable[PointPrediction]) -> dict[str, object]:
    """{"overall": {...}, "groups": [{"model", "engine", "mode", ...}], "unsupported": {reason: rows}}.

    "unsupported" counts the rows lacking each feature (a row may lack several: its reason joins
    them with "; ").

    Each entry holds rows, predicted, coverage and, for "ttft" and "tpot", median_abs, p90_abs and
    mean_signed relative errors (None without predicted rows).
    """
    predictions = list(predictions)
    groups: dict[tuple[str, str, str], list[PointPrediction]] = {}
    reasons: dict[str, int] = {}
    for p in predictions:
        groups.setdefault(p.point.group, []).append(p)
        for reason in (p.point.unsupported or "").split("; "):
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
    return {"overall": _summary(predictions),
            "groups": [{"model": m, "engine": e, "mode": mode, **_summary(items)}
                       for (m, e, mode), items in sorted(groups.items())],
            "unsupported": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
