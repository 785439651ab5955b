"""`paretoserve.plan(...)`, the library call: the plan layer's search plus the report layer's page."""

from __future__ import annotations

import json

from markupsafe import escape

import paretoserve
from paretoserve.metrics.slo import parse_slo
from paretoserve.plan import api
from paretoserve.plan.space import SearchSpace

ARGS = {"trace": "azure-conv", "slo": parse_slo("ttft_p90=2s,tpot_p90=100ms"), "requests": 40,
        "executor": "serial"}


def _space() -> SearchSpace:
    return SearchSpace(devices=["h100_sxm"], tp=[1], max_devices=1, disagg=False)


def test_library_plan_writes_the_report_of_its_search(tmp_path) -> None:
    result = paretoserve.plan("Meta-Llama-3.1-8B", space=_space(), out=tmp_path / "plan", **ARGS)
    page = result.report.read_text(encoding="utf-8")
    assert result.report == tmp_path / "plan" / "report.html"
    rows = [json.loads(line) for line in (tmp_path / "plan" / "plans.jsonl").read_text().splitlines()]
    recommended = next(r for r in rows if r["recommended"])
    assert f"Recommended plan: {escape(recommended['label'])}" in page
    assert "Plan: Meta-Llama-3.1-8B on azure-conv" in page


def test_the_plan_layer_alone_writes_no_report(tmp_path) -> None:
    result = api.plan("Meta-Llama-3.1-8B", space=_space(), out=tmp_path / "plan", verify=False, **ARGS)
    assert (result.out_dir / "plans.jsonl").is_file()
    assert not result.report.exists()
