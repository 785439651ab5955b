"""`plan(...)`: the planner as a library call — search, verify the recommendation, write outputs.

The output folder holds `plans.jsonl` (every evaluated plan), `front.csv` (the Pareto front),
`config.yaml` (the search), `evaluations.jsonl` (unit results; a rerun with the same folder resumes
from it), `recommended/` (a full simulation of the recommended plan, a run folder) and `report.html`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from paretoserve.atomic import write_text_atomic
from paretoserve.calibrate.profile import load_profile
from paretoserve.errors import UserError
from paretoserve.metrics.slo import Slo
from paretoserve.plan.search import PlanOutcome, PlanSearch, run_search
from paretoserve.plan.space import SearchSpace
from paretoserve.report.html import plan_report
from paretoserve.runs import read_run
from paretoserve.sim.api import simulate_run
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.traces import load_trace

RESUME_FILE = "evaluations.jsonl"
#: usd_per_million_tokens is per million output tokens; usd_per_million_total_tokens per million
#: prompt plus output tokens.
FRONT_COLUMNS = ("label", "devices", "max_rate_rps", "usd_per_hour", "usd_per_million_tokens",
                 "usd_per_million_total_tokens", "ttft_p90_s", "tpot_p90_s", "e2e_p90_s", "joules_per_token",
                 "goodput_per_device", "goodput_per_usd_hour", "knee", "recommended", "command")


@dataclass
class PlanResult:
    """What `plan` produced: the search outcome, the verification run's summary and the files."""

    outcome: PlanOutcome
    out_dir: Path
    verified: dict[str, object] | None

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
    devices use the datasheet roofline)."""
    sample = load_trace(trace)[:requests]
    if len(sample) < 20:
        raise UserError(f"trace {trace} has {len(sample)} requests; a plan search needs at least 20")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_search = PlanSearch(model=model, trace=trace, requests=sample, slo=slo, space=space, rate=rate,
                        objectives=objectives, executor=executor, workers=workers, ray_address=ray_address,
                        resume_file=out_dir / RESUME_FILE,
                        profiles={load_profile(p).device: str(p) for p in profiles or []},
                        search=search, trials=trials)
    outcome = run_search(plan_search, progress)
    verified = None
    recommended = outcome.recommended
    recommended_run = None
    if recommended is not None and verify:
        verified = _verify(recommended, plan_search, out_dir / "recommended")
        recommended["verified"] = verified
        recommended_run = read_run(out_dir / "recommended")
    _write_outputs(outcome, plan_search, out_dir)
    plan_report(outcome.rows, title=f"Plan: {model} on {trace}", slo=str(slo), recommended=recommended,
                recommended_run=recommended_run, out_path=out_dir / "report.html")
    return PlanResult(outcome, out_dir, verified)


def _verify(row: dict[str, object], search: PlanSearch, out_dir: Path) -> dict[str, object]:
    """Simulate the recommended plan as a whole cluster at its rate; the planner's figures come
    from per-engine units, so this checks them end to end."""
    p = row["plan"]
    disagg = p["disagg"]
    rate = search.rate if search.rate is not None else float(row["max_rate_rps"])
    config = SimulateConfig(
        model=search.model, hardware=p["device"], tp=p["tp"], pp=p["pp"],
        replicas=1 if disagg else p["dp"], router=p["router"],
        disagg=f"{disagg['prefill']['replicas']}P{disagg['decode']['replicas']}D" if disagg else None,
        prefill_tp=disagg["prefill"]["tp"] if disagg else None, decode_tp=disagg["decode"]["tp"] if disagg else None,
        trace=search.trace, requests=len(search.requests), rate=rate, policy=p["policy"],
        max_num_seqs=p["max_num_seqs"], max_num_batched_tokens=p["max_num_batched_tokens"],
        weight_dtype=p["weight_dtype"], kv_dtype=p["kv_dtype"], slo=str(search.slo),
        profile=search.profiles.get(p["device"]),
        gpu_memory_utilization=search.space.gpu_memory_utilization, iteration_trace=True)
    summary = simulate_run(config, out_dir)
    return {"rate_rps": rate, "slo_attainment": summary.slo_attainment, "ttft_p90_s": summary.ttft.p90,
            "tpot_p90_s": summary.tpot.p90, "run": str(out_dir)}


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
              "plans_evaluated": len(outcome.rows), "pruned": outcome.enumeration.pruned, "estimated": True}
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def _cell(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    """Infinite figures (a plan that meets no SLO) become null in JSON."""
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}
