"""`paretoserve.plan(...)`: the plan search (`paretoserve.plan.api.plan`) followed by its HTML report.

The search lives in the plan layer, which never imports the report layer above it; this module,
above both, adds `report.html` to the output folder, so a notebook user and `paretoserve plan` get
the same folder.
"""

from __future__ import annotations

import functools
from typing import Any

from paretoserve.metrics.slo import Slo
from paretoserve.plan import api
from paretoserve.runs import read_run


@functools.wraps(api.plan)  # the search's signature and docstring: one place for both
def plan(model: str, *, trace: str, slo: Slo, **options: Any) -> api.PlanResult:
    result = api.plan(model, trace=trace, slo=slo, **options)
    write_plan_report(result, title=f"Plan: {model} on {trace}", slo=slo)
    return result


def write_plan_report(result: api.PlanResult, *, title: str, slo: Slo) -> None:
    """Write `result.report` (report.html) from the search outcome and the verification run, if any."""
    from paretoserve.report.html import plan_report

    outcome = result.outcome
    recommended_run = read_run(result.out_dir / "recommended") if result.verified is not None else None
    plan_report(outcome.rows, title=title, slo=str(slo), recommended=outcome.recommended,
                recommended_run=recommended_run, out_path=result.report)
