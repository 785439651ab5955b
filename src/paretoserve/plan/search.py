"""Plan search: enumerate plans, evaluate the units they need, assemble each plan's figures, and
mark the Pareto front, the knee and the recommended plan."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from paretoserve.catalog.device import load_device
from paretoserve.catalog.links import load_link
from paretoserve.catalog.model import load_model
from paretoserve.errors import UserError
from paretoserve.metrics.slo import Slo
from paretoserve.plan.executor import EXECUTORS, run_units
from paretoserve.plan.hetero import hetero_rows
from paretoserve.plan.nsga import nsga2_select
from paretoserve.plan.pareto import knee_index, pareto_mask
from paretoserve.plan.rows import SIMULATED, figures_row
from paretoserve.plan.space import Enumeration, Plan, SearchSpace, enumerate_plans
from paretoserve.plan.units import Unit, UnitContext, UnitResult
from paretoserve.sim.deployment import kv_link
from paretoserve.workload.request import Request

#: Objective name → (plan-row field, label); all minimised.
OBJECTIVES: dict[str, tuple[str, str]] = {
    "cost": ("usd_per_million_tokens", "$ per million output tokens"),
    "ttft": ("ttft_p90_s", "TTFT p90"),
    "tpot": ("tpot_p90_s", "TPOT p90"),
    "energy": ("joules_per_token", "joules per output token"),
    "devices": ("devices", "devices"),
}


@dataclass
class PlanSearch:
    """Everything a search needs. `rate` None: capacity mode (each plan at the highest rate it
    sustains under the SLO); a number: fixed-rate mode (size each plan for that rate, minimise cost)."""

    model: str
    trace: str
    requests: list[Request]
    slo: Slo
    space: SearchSpace
    rate: float | None = None
    objectives: tuple[str, ...] = ("cost", "ttft", "tpot", "energy")
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    resume_file: Path | None = None
    min_span_s: float = 20.0
    profiles: dict[str, str] = field(default_factory=dict)  # device → calibrated profile file
    search: str = "auto"  # grid (every plan), nsga2 (optuna NSGA-II), auto (grid up to max_grid_units)
    trials: int = 300
    max_grid_units: int = 800


@dataclass
class PlanOutcome:
    """Rows for every evaluated plan (dicts in the schema of plans.jsonl) and what was pruned."""

    rows: list[dict[str, object]]
    enumeration: Enumeration
    units: int
    unit_results: dict[str, UnitResult] = field(default_factory=dict)
    by_device: list[dict[str, object]] = field(default_factory=list)

    @property
    def recommended(self) -> dict[str, object] | None:
        """The recommended plan's row."""
        return next((r for r in self.rows if r["recommended"]), None)

    @property
    def front(self) -> list[dict[str, object]]:
        """Front rows, cheapest first."""
        return sorted((r for r in self.rows if r["pareto"]), key=lambda r: r["usd_per_million_tokens"])


def units_of(plan: Plan) -> list[Unit]:
    """The evaluation units a plan's figures come from."""
    if plan.disagg is None:
        return [Unit("serve", plan.engine)]
    x, tp_p, y, tp_d = plan.disagg
    device = load_device(plan.engine.device)
    bandwidth, latency, _ = kv_link(device, x, tp_p, y, tp_d, plan.engine.pp)
    prefill = replace(plan.engine, tp=tp_p)
    decode = replace(plan.engine, tp=tp_d)
    return [Unit("prefill", prefill, (bandwidth, latency)), Unit("decode", decode)]


def check_search(search: PlanSearch) -> Enumeration:
    """Check every choice of `search` (objectives, search method, executor, model, devices, budgets)
    without evaluating anything; returns the plans to evaluate. UserError on the first bad choice."""
    for name in search.objectives:
        if name not in OBJECTIVES:
            raise UserError(f"unknown objective '{name}'; expected some of {', '.join(OBJECTIVES)}")
    if search.search not in ("auto", "grid", "nsga2"):
        raise UserError(f"unknown search '{search.search}'; expected auto, grid or nsga2")
    if search.rate is not None and not search.rate > 0:
        raise UserError(f"--rate {search.rate:g}: expected a rate above 0 requests/s")
    if search.executor not in EXECUTORS:
        raise UserError(f"unknown executor '{search.executor}'; expected {', '.join(EXECUTORS)}")
    enum = enumerate_plans(search.space, load_model(search.model))
    for chain in search.space.hetero_stages + search.space.attention_offload:
        for name in chain:
            load_device(name)
    if search.space.hetero_link is not None:
        load_link(search.space.hetero_link)
    if not enum.plans:
        raise UserError(_nothing_fits(enum))
    return enum


def run_search(search: PlanSearch, progress: Callable[[int, int], None] | None = None) -> PlanOutcome:
    """Enumerate, evaluate and rank; UserError when nothing can be evaluated."""
    enum = check_search(search)
    plan_units = {plan: units_of(plan) for plan in enum.plans}
    unique = list({u.key: u for units in plan_units.values() for u in units}.values())
    ctx = UnitContext(model=search.model, requests=tuple(search.requests), slo=search.slo,
                      gpu_memory_utilization=search.space.gpu_memory_utilization, min_span_s=search.min_span_s,
                      profiles=tuple(sorted(search.profiles.items())))
    done = [0]

    def tick(_: UnitResult) -> None:
        done[0] += 1
        if progress:
            progress(done[0], len(unique))

    plans = enum.plans
    if search.search == "nsga2" or (search.search == "auto" and len(unique) > search.max_grid_units):
        results: dict[str, UnitResult] = {}

        def evaluate(units: list[Unit]) -> dict[str, UnitResult]:
            missing = [u for u in units if u.key not in results]
            if missing:
                results.update(run_units(missing, ctx, executor="serial", resume_file=search.resume_file,
                                         on_result=tick))
            return results

        plans = nsga2_select(search.space, set(enum.plans), [OBJECTIVES[o][0] for o in search.objectives],
                             search.trials, evaluate, units_of, lambda p, r: plan_row(p, r, search))
        unique = [u for u in unique if u.key in results]
    else:
        results = run_units(unique, ctx, executor=search.executor, workers=search.workers,
                            ray_address=search.ray_address, resume_file=search.resume_file, on_result=tick)
    rows = [row for plan in plans
            if (row := plan_row(plan, [results[u.key] for u in plan_units[plan]], search)) is not None]
    rows += hetero_rows(search.space, load_model(search.model), search.requests, search.slo, search.rate,
                        enum.notes)
    if search.rate is not None:
        rows = _dedupe(rows)
        if not rows:
            raise UserError(f"no plan serves {search.rate:g} req/s within {_budget(search.space)}"
                            + _best_unbounded(enum, results, plan_units, search))
    mark_front(rows, search.objectives)
    by_device = device_summary(search, enum, rows, results, plan_units)
    return PlanOutcome(rows, enum, len(unique), results, by_device)


def plan_row(plan: Plan, unit_results: list[UnitResult], search: PlanSearch) -> dict[str, object] | None:
    """A plan's figures from its units; None when it cannot serve the fixed rate within budget."""
    device = load_device(plan.engine.device)
    if plan.disagg is None:
        (serve,) = unit_results
        per_replica = serve.capacity_rps * plan.engine.dp_attention  # the unit is one attention-DP rank
        ttft, tpot, e2e = serve.ttft_p90_s, serve.tpot_p90_s, serve.e2e_p90_s
        joules_per_request, out_per_request = serve.joules_per_request, serve.output_tokens_per_request
        in_per_request = serve.input_tokens_per_request
        attainment = serve.attainment
        if search.rate is not None and per_replica > 0:
            plan = replace(plan, replicas=math.ceil(search.rate / per_replica))
        capacity = per_replica * plan.replicas
    else:
        prefill, decode = unit_results
        x, tp_p, y, tp_d = plan.disagg
        if search.rate is not None and prefill.capacity_rps > 0 and decode.capacity_rps > 0:
            x = math.ceil(search.rate / prefill.capacity_rps)
            y = math.ceil(search.rate / decode.capacity_rps)
            plan = replace(plan, disagg=(x, tp_p, y, tp_d))
        capacity = min(x * prefill.capacity_rps, y * decode.capacity_rps)
        ttft, tpot = prefill.ttft_p90_s, decode.tpot_p90_s
        e2e = None if prefill.ttft_p90_s is None or decode.e2e_p90_s is None \
            else prefill.ttft_p90_s + decode.e2e_p90_s
        joules_per_request = prefill.joules_per_request + decode.joules_per_request
        out_per_request, in_per_request = decode.output_tokens_per_request, decode.input_tokens_per_request
        attainment = min(prefill.attainment, decode.attainment)
    usd_per_hour = plan.devices * device.price_per_hour
    if search.rate is not None:
        space = search.space
        if capacity <= 0 or plan.devices > space.max_devices or (
                space.max_usd_per_hour is not None and usd_per_hour > space.max_usd_per_hour):
            return None
    served = capacity if search.rate is None else min(capacity, search.rate)
    return figures_row(plan.to_dict(), plan.label, plan.devices, usd_per_hour, capacity, served,
                       (ttft, tpot, e2e), joules_per_request, (in_per_request, out_per_request), attainment,
                       reproduce_command(search, plan, capacity if search.rate is None else search.rate))


def mark_front(rows: list[dict[str, object]], objectives: tuple[str, ...]) -> None:
    """Set `pareto`, `knee` and `recommended` (the cheapest SLO-feasible plan), with its reasons."""
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        return
    fields = [OBJECTIVES[name][0] for name in objectives]
    points = [[float(r[f]) if r[f] is not None else math.inf for f in fields] for r in feasible]
    for row, on_front in zip(feasible, pareto_mask(points), strict=True):
        row["pareto"] = on_front
    front = [r for r in feasible if r["pareto"]]
    knee = knee_index([[float(r[f]) for f in fields] for r in front])
    if knee is not None:
        front[knee]["knee"] = True
    order = recommendation_order(rows)
    if order:
        order[0]["recommended"] = True
        order[0]["reason"] = _reasons(order[0], order)
        analytic = [r for r in feasible if r not in order]
        if analytic:
            alt = min(analytic, key=lambda r: r["usd_per_million_tokens"])
            ratio = alt["usd_per_million_tokens"] / order[0]["usd_per_million_tokens"]
            order[0]["reason"] += (f"\nThe best heterogeneous candidate ({alt['label']}; {alt['evaluation']}) "
                                   f"would cost {ratio:.2f}× as much per token.")


def recommendation_order(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The simulated plans that meet the SLO (by their units' estimates), cheapest per token first
    (then fewest devices): the order in which plans are recommended. Plans priced by the analytic
    stage model are never recommended: no whole-plan simulation can verify them."""
    return sorted((r for r in rows if r["feasible"] and r.get("evaluation", SIMULATED) == SIMULATED),
                  key=lambda r: (r["usd_per_million_tokens"], r["devices"]))


def recommend_instead(rows: list[dict[str, object]], chosen: dict[str, object],
                      missed: list[dict[str, object]]) -> None:
    """Move the recommendation to `chosen` because the cheaper plans `missed` failed their
    whole-plan simulation (each carries its `verified` figures); the reasons say so."""
    for row in rows:
        row["recommended"] = row is chosen
    labels = "; ".join(f"{r['label']} ({r['verified']['slo_attainment']:.1%})" for r in missed)  # type: ignore[index]
    feasible = recommendation_order(rows)
    chosen["reason"] = (f"The {len(missed)} cheaper plan{'s' if len(missed) != 1 else ''} missed the SLO "
                        f"attainment target when simulated whole: {labels}.\n"
                        + _reasons(chosen, feasible, first=f"Cheapest plan whose whole-plan simulation meets "
                                                          f"the SLO, of {len(feasible)} estimated to meet it"))


def _reasons(best: dict[str, object], feasible: list[dict[str, object]], first: str | None = None) -> str:
    """Why the recommended plan: cost, latency at its rate, and the runner-up of the other kind."""
    disagg = best["plan"]["disagg"] is not None  # type: ignore[index]
    first = first or f"Cheapest of {len(feasible)} plans that meet the SLO"
    lines = [f"{first}: ${best['usd_per_million_tokens']:.3f} per million output tokens "
             f"(${best['usd_per_million_total_tokens']:.3f} per million prompt + output tokens) at "
             f"{best['max_rate_rps']:.2f} req/s on {best['devices']} device{'s' if best['devices'] != 1 else ''}."]
    lines.append(f"TTFT p90 {_ms(best['ttft_p90_s'])}, TPOT p90 {_ms(best['tpot_p90_s'])}, "
                 f"{best['joules_per_token']:.2f} J per output token (estimated by simulation).")
    others = [r for r in feasible if (r["plan"]["disagg"] is not None) != disagg]  # type: ignore[index]
    if others:
        alt = min(others, key=lambda r: r["usd_per_million_tokens"])
        kind = "aggregated" if disagg else "disaggregated"
        ratio = alt["usd_per_million_tokens"] / best["usd_per_million_tokens"]
        lines.append(f"The best {kind} plan ({alt['label']}) costs {ratio:.2f}× as much per token.")
    return "\n".join(lines)


def _ms(value: object) -> str:
    return "n/a" if value is None else f"{float(value) * 1e3:.0f} ms"


def reproduce_command(search: PlanSearch, plan: Plan, rate: float) -> str:
    """The `paretoserve simulate` command that reproduces a plan's simulation at `rate` req/s."""
    e = plan.engine
    parts = ["paretoserve simulate", f"--model {search.model}", f"--hardware {e.device}"]
    if plan.disagg:
        x, tp_p, y, tp_d = plan.disagg
        parts += [f"--disagg {x}P{y}D", f"--prefill-tp {tp_p}", f"--decode-tp {tp_d}"]
    else:
        parts += [f"--tp {e.tp}", f"--replicas {plan.replicas}", f"--router {plan.router}"]
        parts += [f"--dp-attention {e.dp_attention}"] if e.dp_attention > 1 else []
        parts += [f"--ep {e.ep}"] if e.ep > 1 else []
    if e.pp > 1:
        parts.append(f"--pp {e.pp}")
    parts += [f"--max-num-seqs {e.max_num_seqs}", f"--max-num-batched-tokens {e.max_num_batched_tokens}",
              f"--weight-dtype {e.weight_dtype}", f"--kv-dtype {e.kv_dtype}", f"--policy {e.policy}",
              f"--profile {search.profiles[e.device]}" if e.device in search.profiles else "",
              f"--trace {search.trace}", f"--requests {len(search.requests)}", f"--rate {rate:.4g}",
              f"--slo '{search.slo}'"]
    return " ".join(p for p in parts if p)


def _dedupe(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """In fixed-rate mode different pool sizes can scale to the same plan: keep one of each."""
    seen: dict[str, dict[str, object]] = {}
    for row in rows:
        seen.setdefault(str(row["label"]), row)
    return list(seen.values())


def _nothing_fits(enum: Enumeration) -> str:
    pruned = ", ".join(f"{n} {why}" for why, n in sorted(enum.pruned.items(), key=lambda kv: -kv[1]))
    message = "no plan in the search space is feasible" + (f" ({pruned})" if pruned else " (empty search space)")
    if enum.smallest_infeasible:
        plan, reason = enum.smallest_infeasible
        message += f"; the smallest plan that fits in memory, {plan.label}, is {reason}: it needs " \
                   f"{plan.devices} devices"
    return message


def _best_unbounded(enum: Enumeration, results: dict[str, UnitResult], plan_units: dict[Plan, list[Unit]],
                    search: PlanSearch) -> str:
    """Suffix naming the cheapest plan that would serve the rate if the budget allowed."""
    rows = _unbounded_rows(enum.plans, results, plan_units, search)
    if not rows:
        return "; no plan meets the SLO at any size — relax the SLO or add faster devices"
    best = min(rows, key=lambda r: r["usd_per_hour"])
    return (f"; the cheapest that would is {best['label']} at ${best['usd_per_hour']:.2f}/h — it needs "
            f"{best['devices']} devices")


def _unbounded_rows(plans: list[Plan], results: dict[str, UnitResult], plan_units: dict[Plan, list[Unit]],
                    search: PlanSearch) -> list[dict[str, object]]:
    """Rows of the evaluated `plans` sized for the fixed rate as if there were no budget."""
    unbounded = replace(search, space=search.space.model_copy(update={"max_devices": 10**6,
                                                                       "max_usd_per_hour": None}))
    return [row for plan in plans if all(u.key in results for u in plan_units[plan])
            and (row := plan_row(plan, [results[u.key] for u in plan_units[plan]], unbounded)) is not None]


def _budget(space: SearchSpace) -> str:
    """The budget in the flags' words, e.g. 'the device budget of 8 (--budget) and the dollar budget of
    $3.5/h (--budget-usd)'."""
    return (f"the device budget of {space.max_devices} (--budget)"
            + (f" and the dollar budget of ${space.max_usd_per_hour:g}/h (--budget-usd)"
               if space.max_usd_per_hour else ""))


def device_summary(search: PlanSearch, enum: Enumeration, rows: list[dict[str, object]],
                   results: dict[str, UnitResult], plan_units: dict[Plan, list[Unit]]) -> list[dict[str, object]]:
    """Each device type of the search space with its best plan (the cheapest estimated to meet the
    SLO) or, in `reason`, why it has none."""
    summary: list[dict[str, object]] = []
    for name in search.space.devices:
        device = load_device(name).name
        ranked = recommendation_order([r for r in rows if r["plan"]["device"] == device])  # type: ignore[index]
        entry: dict[str, object] = {"device": device, "best": None, "devices": None, "max_rate_rps": None,
                                    "usd_per_million_tokens": None, "reason": None}
        if ranked:
            best = ranked[0]
            entry.update(best=best["label"], devices=best["devices"], max_rate_rps=best["max_rate_rps"],
                         usd_per_million_tokens=best["usd_per_million_tokens"])
        else:
            entry["reason"] = _absent_reason(device, search, enum, results, plan_units)
        summary.append(entry)
    return summary


def _absent_reason(device: str, search: PlanSearch, enum: Enumeration, results: dict[str, UnitResult],
                   plan_units: dict[Plan, list[Unit]]) -> str:
    """Why `device` has no plan in the answer: pruned (and why), unsampled, over budget at the rate,
    or no plan on it meets the SLO."""
    plans = [p for p in enum.plans if p.engine.device == device]
    if not plans:
        pruned = sorted(enum.pruned_by_device.get(device, {}).items(), key=lambda kv: -kv[1])
        text = "no plan in the search space: " + (", ".join(why for why, _ in pruned) or "nothing to try")
        if device in enum.over_budget:
            plan, budget = enum.over_budget[device]
            price = plan.devices * load_device(device).price_per_hour
            text += (f"; the smallest that fits in memory, {plan.label}, is {budget} "
                     f"({plan.devices} devices, ${price:.2f}/h; {_budget(search.space)})")
        return text
    evaluated = [p for p in plans if all(u.key in results for u in plan_units[p])]
    if not evaluated:
        return "not sampled by the NSGA-II search"
    if search.rate is not None:
        unbounded = _unbounded_rows(evaluated, results, plan_units, search)
        if unbounded:
            best = min(unbounded, key=lambda r: r["usd_per_hour"])
            return (f"over {_budget(search.space)} at {search.rate:g} req/s: the cheapest plan "
                    f"that would serve it, {best['label']}, needs {best['devices']} devices at "
                    f"${best['usd_per_hour']:.2f}/h")
    return "no plan meets the SLO at any rate"
