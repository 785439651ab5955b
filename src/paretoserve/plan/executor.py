"""Run evaluation units in parallel — a local process pool by default, or Ray tasks — streaming
results back as they finish, with a resume file so an interrupted search loses nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from paretoserve.errors import UserError
from paretoserve.plan.units import Unit, UnitContext, UnitResult, evaluate_unit


def load_done(path: Path, fingerprint: str) -> dict[str, UnitResult]:
    """Results already in a resume file for the same search context (`fingerprint`); lines of
    another search and a truncated last line from an interruption are ignored."""
    done: dict[str, UnitResult] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                data = json.loads(line)
                if data.pop("context") == fingerprint:
                    done[data["key"]] = UnitResult(**data)
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
    return done


def run_units(units: list[Unit], ctx: UnitContext, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, resume_file: Path | None = None,
              on_result: Callable[[UnitResult], None] | None = None) -> dict[str, UnitResult]:
    """Evaluate every unit once; returns results by unit key.

    Results found in `resume_file` are reused; each new result is appended to it (flushed) as it
    arrives. `executor` is "local" (processes; `workers` defaults to the CPU count), "serial", or
    "ray" (`ray_address` of a running cluster, or a local Ray instance with `workers` CPUs).
    """
    fingerprint = ctx.fingerprint
    done = load_done(resume_file, fingerprint) if resume_file else {}
    todo = [u for u in units if u.key not in done]
    results = {u.key: done[u.key] for u in units if u.key in done}
    for result in results.values():
        if on_result:
            on_result(result)
    runner = EXECUTORS.get(executor)
    if runner is None:
        raise UserError(f"unknown executor '{executor}'; expected {', '.join(EXECUTORS)}")
    sink = resume_file.open("a", encoding="utf-8") if resume_file else None
    try:
        for result in runner(todo, ctx, workers, ray_address):
            results[result.key] = result
            if sink:
                sink.write(json.dumps({"context": fingerprint, **result.to_dict()}) + "\n")
                sink.flush()
            if on_result:
                on_result(result)
    finally:
        if sink:
            sink.close()
    return results


def _serial(units: list[Unit], ctx: UnitContext, workers: int | None, address: str | None) -> Iterator[UnitResult]:
    for unit in units:
        yield evaluate_unit(unit, ctx)


def _local(units: list[Unit], ctx: UnitContext, workers: int | None, address: str | None) -> Iterator[UnitResult]:
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(units) <= 1:
        yield from _serial(units, ctx, workers, address)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(evaluate_unit, unit, ctx) for unit in units}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


def _ray(units: list[Unit], ctx: UnitContext, workers: int | None, address: str | None) -> Iterator[UnitResult]:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'paretoserve[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(evaluate_unit)
        shared = ray.put(ctx)
        pending = [remote.remote(unit, shared) for unit in units]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])
    finally:
        if started_here:
            ray.shutdown()


#: Executor name → the function that evaluates units with it.
EXECUTORS: dict[str, Callable[[list[Unit], UnitContext, int | None, str | None], Iterator[UnitResult]]] = {
    "local": _local, "serial": _serial, "ray": _ray}
