"""`plan(...)`: the planner as a library call — search, verify the recommendation, write outputs.

The output folder holds `plans.jsonl` (every evaluated plan), `front.csv` (the Pareto front),
`config.yaml` (the search, and `by_device`: each device type's best plan or why it has none),
`evaluations.jsonl` (unit results; a rerun with the same folder resumes from it), `recommended/` (a
full simulation of the recommended plan, a run folder) and `verify/<rank>/` (the whole-plan
simulations of cheaper plans that missed the SLO, if any). The report layer adds `report.html`:
`paretoserve.plan` (`paretoserve.planning`) runs this search, then the report.

Verification: the planner's figures come from per-engine units, so plans are simulated whole, in
recommendation order (cheapest first), until one meets the SLO's attainment target — at most
`MAX_VERIFIED`. The first that does is recommended; when none does, the cheapest stays recommended
and its `verified.met` is false.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from paretoserve.atomic import write_text_atomic
from paretoserve.errors import UserError
from paretoserve.metrics.slo import Slo
from paretoserve.outputs import install_folder, open_folder
from paretoserve.perf.profile import load_profile
from paretoserve.plan.search import (
    PlanOutcome,
    PlanSearch,
    check_search,
    recommend_instead,
    recommendation_order,
    run_search,
)
from paretoserve.plan.space import SearchSpace
from paretoserve.sim.api import simulate_run
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.traces import load_trace

RESUME_FILE = "evaluations.jsonl"
#: Most whole-plan simulations of the verification: the recommended plan and 3 more.
MAX_VERIFIED = 4
#: usd_per_million_tokens is per million output tokens; usd_per_million_total_tokens per million
#: prompt plus output tokens.
FRONT_COLUMNS = ("label", "devices", "dp_attention", "ep", "max_rate_rps", "usd_per_hour", "usd_per_million_tokens",
                 "usd_per_million_total_tokens", "ttft_p90_s", "tpot_p90_s", "e2e_p90_s", "joules_per_token",
                 "goodput_per_device", "goodput_per_usd_hour", "knee", "recommended", "evaluation", "command")


@dataclass
class PlanResult:
    """What `plan` produced: the search outcome, the recommended plan's verification (None when
    not verified), every verification in the order tried, and the files."""

    outcome: PlanOutcome
    out_dir: Path
    verified: dict[str, object] | None
    verifications: list[dict[str, object]]

    @property
    def report(self) -> Path:
        """The HTML report."""
        return self.out_dir / "report.html"


def plan(model: str, *, trace: str, slo: Slo, space: SearchSpace, out: str | Path, requests: int = 1000,
         rate: float | None = None, objectives: tuple[str, ...] = ("cost", "ttft", "tpot", "energy"),
         executor: str = "local", workers: int | None = None, ray_address: str | None = None,
         verify: bool = True, profiles: list[str] | None = None, search: str = "auto", trials: int = 300,
         progress: Callable[[int, int], None] | None = None) -> PlanResult:
    """Search `space` for `model` serving the first `requests` requests of `trace` under `slo`.

    `search`: "grid" evaluates every plan, "nsga2" runs `trials` NSGA-II trials (optuna), "auto"
    uses the grid unless the space needs more than 800 engine evaluations.

    `profiles`: calibrated profile files; each applies to the device it was fitted for (other
    devices use the datasheet roofline).

    `out`: a new folder, or an earlier plan's folder (whose evaluations.jsonl the search resumes
    from); anything else is a `UserError` (`paretoserve.outputs`), raised before any work."""
    sample = load_trace(trace)[:requests]
    if len(sample) < 20:
        raise UserError(f"trace {trace} has {len(sample)} requests; a plan search needs at least 20")
    plan_search = PlanSearch(model=model, trace=trace, requests=sample, slo=slo, space=space, rate=rate,
                        objectives=objectives, executor=executor, workers=workers, ray_address=ray_address,
                        resume_file=Path(out) / RESUME_FILE,
                        profiles={load_profile(p).device: str(p) for p in profiles or []},
                        search=search, trials=trials)
    check_search(plan_search)  # every choice is checked before the folder is made
    out_dir = open_folder(out, "plan", inputs=(model, trace, *(profiles or [])))
    outcome = run_search(plan_search, progress)
    verifications: list[dict[str, object]] = []
    if outcome.recommended is not None and verify:
        verifications = _verify_in_order(outcome, plan_search, out_dir)
    recommended = outcome.recommended
    _write_outputs(outcome, plan_search, out_dir)
    verified = recommended.get("verified") if recommended is not None else None
    return PlanResult(outcome, out_dir, verified, verifications)  # type: ignore[arg-type]


def _verify_in_order(outcome: PlanOutcome, search: PlanSearch, out_dir: Path) -> list[dict[str, object]]:
    """Simulate plans whole in recommendation order until one meets the SLO (at most
    `MAX_VERIFIED`), recommend the first that does, and move its run to `recommended/`; each
    tried row gets its `verified` figures. Returns them, with the plan's label, in order."""
    tried: list[dict[str, object]] = []
    for rank, row in enumerate(recommendation_order(outcome.rows)[:MAX_VERIFIED], 1):
        row["verified"] = _verify(row, search, out_dir / "verify" / str(rank))
        tried.append(row)
        if row["verified"]["met"]:
            break
    chosen = tried[-1] if tried[-1]["verified"]["met"] else tried[0]  # type: ignore[index]
    if chosen is not tried[0]:
        recommend_instead(outcome.rows, chosen, tried[:-1])
    verified: dict[str, object] = chosen["verified"]  # type: ignore[assignment]
    install_folder(Path(str(verified["run"])), out_dir / "recommended", "simulate")
    verified["run"] = str(out_dir / "recommended")
    with contextlib.suppress(OSError):
        (out_dir / "verify").rmdir()  # only when no other plan was simulated
    return [{"label": r["label"], **r["verified"]} for r in tried]  # type: ignore[dict-item]


def verification_sentence(v: dict[str, object]) -> str:
    """A whole-plan simulation in words: what was simulated, the rate delivered, and whether the SLO's
    attainment target was met (`v` is a row's `verified` entry, with its `label`)."""
    delivered = v["delivered_rate_rps"]
    at = (f"{v['label']} simulated whole at {float(v['rate_rps']):.2f} req/s (delivered "  # type: ignore[arg-type]
          + ("an undefined rate" if delivered is None else f"{float(delivered):.2f} req/s")  # type: ignore[arg-type]
          + f" over {v['requests']} requests)")
    attainment, target = v["slo_attainment"], float(v["target_attainment"])  # type: ignore[arg-type]
    if v["met"]:
        return f"Verified: {at} meets the SLO: attainment {float(attainment):.1%} ≥ target {target:.0%}."  # type: ignore[arg-type]
    got = "no attainment" if attainment is None else f"attainment {float(attainment):.1%}"  # type: ignore[arg-type]
    return f"SLO not met: {at}: {got}, below the target {target:.0%}."


def _verify(row: dict[str, object], search: PlanSearch, out_dir: Path) -> dict[str, object]:
    """Simulate a plan as a whole cluster at its rate (the planner's figures come from per-engine
    units, so this checks them end to end) and compare its SLO attainment with the target."""
    p = row["plan"]
    disagg = p["disagg"]
    rate = search.rate if search.rate is not None else float(row["max_rate_rps"])
    config = SimulateConfig(
        model=search.model, hardware=p["device"], tp=p["tp"], pp=p["pp"],
        dp_attention=p.get("dp_attention", 1), ep=p.get("ep", 1),
        replicas=1 if disagg else p["dp"], router=p["router"],
        disagg=f"{disagg['prefill']['replicas']}P{disagg['decode']['replicas']}D" if disagg else None,
        prefill_tp=disagg["prefill"]["tp"] if disagg else None, decode_tp=disagg["decode"]["tp"] if disagg else None,
        trace=search.trace, requests=len(search.requests), rate=rate, policy=p["policy"],
        max_num_seqs=p["max_num_seqs"], max_num_batched_tokens=p["max_num_batched_tokens"],
        weight_dtype=p["weight_dtype"], kv_dtype=p["kv_dtype"], slo=str(search.slo),
        profile=search.profiles.get(p["device"]),
        gpu_memory_utilization=search.space.gpu_memory_utilization, iteration_trace=True)
    summary = simulate_run(config, out_dir)
    target = search.slo.attainment_target
    attainment = summary.slo_attainment
    return {"rate_rps": rate, "delivered_rate_rps": summary.delivered_rate_rps, "requests": summary.requests,
            "slo_attainment": attainment, "target_attainment": target,
            "met": attainment is not None and attainment >= target,
            "ttft_p90_s": summary.ttft.p90, "tpot_p90_s": summary.tpot.p90, "run": str(out_dir)}


def _write_outputs(outcome: PlanOutcome, search: PlanSearch, out_dir: Path) -> None:
    rows = sorted(outcome.rows, key=lambda r: (not r["feasible"], r["usd_per_million_tokens"]))
    write_text_atomic(out_dir / "plans.jsonl", "".join(json.dumps(_jsonable(r)) + "\n" for r in rows))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FRONT_COLUMNS)
    for row in outcome.front:
        writer.writerow([_cell(row[c]) for c in FRONT_COLUMNS])
    write_text_atomic(out_dir / "front.csv", buffer.getvalue())
    config = {"command": "plan", "model": search.model, "trace": search.trace, "requests": len(search.requests),
              "slo": str(search.slo), "rate": search.rate, "objectives": list(search.objectives),
              "search": search.search, "trials": search.trials,
              "space": search.space.model_dump(mode="json"), "profiles": search.profiles,
              "units_evaluated": outcome.units,
              "plans_evaluated": len(outcome.rows), "pruned": outcome.enumeration.pruned,
              "notes": outcome.enumeration.notes,
              "by_device": [_jsonable(entry) for entry in outcome.by_device], "estimated": True}
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def _cell(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    """Infinite figures (a plan that meets no SLO) become null in JSON."""
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}
