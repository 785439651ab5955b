"""NSGA-II over the plan space (optuna), for spaces too large to evaluate every engine.

Each trial picks a plan by its coordinates (device, aggregated with attention-DP and EP or xPyD
with pool sizes and TPs, PP, batching limits, dtypes, policy); plans outside the feasible enumeration are pruned without
simulation; the rest are scored on the search objectives from their evaluation units, which are
simulated once and cached (and written to the resume file).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import optuna

from paretoserve.plan.space import Engine, Plan, SearchSpace
from paretoserve.plan.units import Unit, UnitResult


def nsga2_select(space: SearchSpace, feasible: set[Plan], objective_fields: list[str], trials: int,
                 evaluate: Callable[[list[Unit]], dict[str, UnitResult]],
                 units_of: Callable[[Plan], list[Unit]],
                 row_of: Callable[[Plan, list[UnitResult]], dict[str, object] | None],
                 seed: int = 0) -> list[Plan]:
    """The feasible plans NSGA-II visited in `trials` trials (each evaluated through `evaluate`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, trials // 5)))
    study = optuna.create_study(directions=["minimize"] * len(objective_fields), sampler=sampler)
    visited: dict[Plan, None] = {}

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        plan = _suggest(trial, space)
        if plan not in feasible:
            raise optuna.TrialPruned()
        units = units_of(plan)
        results = evaluate(units)
        row = row_of(plan, [results[u.key] for u in units])
        if row is None or not row["feasible"]:
            raise optuna.TrialPruned()
        visited[plan] = None
        return tuple(float(row[f]) if row[f] is not None else math.inf for f in objective_fields)

    study.optimize(objective, n_trials=trials)
    return list(visited)


def _suggest(trial: optuna.Trial, space: SearchSpace) -> Plan:
    """A plan from the trial's choices, in the same normal form `enumerate_plans` produces."""
    device = trial.suggest_categorical("device", space.devices)
    disagg = space.disagg and trial.suggest_categorical("mode", ["aggregated", "disaggregated"]) == "disaggregated"
    pp = trial.suggest_categorical("pp", space.pp)
    seqs = trial.suggest_categorical("max_num_seqs", space.max_num_seqs)
    mbt = trial.suggest_categorical("max_num_batched_tokens", space.max_num_batched_tokens)
    wdt = trial.suggest_categorical("weight_dtype", space.weight_dtypes)
    kdt = trial.suggest_categorical("kv_dtype", space.kv_dtypes)
    tp = trial.suggest_categorical("tp", space.tp)
    if not disagg:
        policy = trial.suggest_categorical("policy", space.policies)
        dpa = trial.suggest_categorical("dp_attention", space.dp_attention)
        ep = trial.suggest_categorical("ep", space.ep)
        return Plan(Engine(device, tp, pp, seqs, mbt, wdt, kdt, policy, dpa, ep), 1, space.router)
    decode_tp = trial.suggest_categorical("decode_tp", space.tp)
    x = trial.suggest_int("prefill_replicas", 1, space.max_pool_replicas)
    y = trial.suggest_int("decode_replicas", 1, space.max_pool_replicas)
    return Plan(Engine(device, tp, pp, seqs, mbt, wdt, kdt, "vllm"), 1, space.router, (x, tp, y, decode_tp))
