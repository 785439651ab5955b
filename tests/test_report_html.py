"""HTML reports: the plan-search page and the runs comparison page, their CLI, and their rendering in
headless Chromium (plots drawn, no console errors, nothing fetched from the network)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from markupsafe import escape
from typer.testing import CliRunner

from browser import render_in_chromium
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.metrics import RequestRecord, parse_slo, summarize
from paretoserve.plan.pareto import knee_index, pareto_mask
from paretoserve.report.html import plan_report, runs_report
from paretoserve.runs import Run, RunWriter, read_run
from paretoserve.sim.iteration import IterationRow

SLO = "ttft_p90=1s,tpot_p90=60ms"
PLAN_FIGURES = ("pareto-ttft", "pareto-energy", "cdf", "timeline")
RUNS_FIGURES = ("cdf", "timeline", "per-request")

runner = CliRunner()


# ------------------------------------------------------------------------------------------------
# Fixtures: plans and run folders
# ------------------------------------------------------------------------------------------------

def _plan(index: int, device: str, devices: int, tp: int, rng: np.random.Generator) -> dict[str, Any]:
    """One synthetic evaluated plan (numbers loosely like a real search's)."""
    price = {"h100_sxm": 3.0, "a100_sxm": 1.8, "l40s": 0.9}[device]
    dp = devices // tp
    rate = dp * (4.0 / price) * rng.uniform(0.6, 1.4)
    tokens_per_s = rate * 250
    usd_per_hour = price * devices
    ttft = 0.15 + 0.6 / tp * rng.uniform(0.5, 1.5)
    tpot = 0.012 + 0.04 / tp * rng.uniform(0.5, 1.5)
    feasible = ttft <= 1.0 and tpot <= 0.06
    return {
        "plan": {"device": device, "tp": tp, "pp": 1, "dp": dp, "disagg": None, "max_num_seqs": 256,
                 "max_num_batched_tokens": 8192, "weight_dtype": "bf16", "kv_dtype": "bf16",
                 "policy": "vllm", "router": "round_robin"},
        "label": f"{devices}×{device} tp{tp} dp{dp}", "devices": devices, "max_rate_rps": rate,
        "goodput_rps": rate * 0.92, "usd_per_hour": usd_per_hour,
        "usd_per_million_tokens": usd_per_hour / 3600 / tokens_per_s * 1e6,
        "ttft_p90_s": ttft, "tpot_p90_s": tpot, "e2e_p90_s": ttft + 250 * tpot,
        "joules_per_token": 700 * devices / tokens_per_s * rng.uniform(0.8, 1.2),
        "goodput_per_device": rate * 0.92 / devices, "goodput_per_usd_hour": rate * 0.92 / usd_per_hour,
        "slo_attainment": 0.93 if feasible else 0.7, "feasible": feasible, "pareto": False, "knee": False,
        "recommended": False,
        "command": (f"paretoserve simulate --model Meta-Llama-3.1-8B --hardware {device} --tp {tp} "
                    f"--replicas {dp} --rate {rate:.2f} --slo '{SLO}' --out runs/plan-{index}"),
        "reason": "",
    }


def _disagg_plan(index: int) -> dict[str, Any]:
    """A disaggregated plan that has no rate meeting the SLO (no latencies): drawn nowhere, listed as such."""
    return {
        "plan": {"device": "h100_sxm", "tp": 2, "pp": 1, "dp": 1, "max_num_seqs": 128,
                 "disagg": {"prefill": {"replicas": 1, "tp": 2}, "decode": {"replicas": 2, "tp": 1}},
                 "max_num_batched_tokens": 4096, "weight_dtype": "fp8", "kv_dtype": "fp8", "policy": "vllm",
                 "router": "least_outstanding"},
        "label": "4×h100_sxm 1P2D", "devices": 4, "max_rate_rps": 0.0, "goodput_rps": 0.0,
        "usd_per_hour": 12.0, "usd_per_million_tokens": None, "ttft_p90_s": None, "tpot_p90_s": None,
        "e2e_p90_s": None, "joules_per_token": None, "goodput_per_device": 0.0, "goodput_per_usd_hour": 0.0,
        "slo_attainment": 0.0, "feasible": False, "pareto": False, "knee": False, "recommended": False,
        "command": f"paretoserve simulate --model Meta-Llama-3.1-8B --disagg 1P2D --out runs/plan-{index}",
        "reason": "",
    }


def make_plans(seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic search results with the front, knee and recommended plan marked as the planner would."""
    rng = np.random.default_rng(seed)
    plans = []
    for device in ("h100_sxm", "a100_sxm", "l40s"):
        for devices in (1, 2, 4, 8):
            for tp in (1, 2, 4):
                if tp <= devices:
                    plans.append(_plan(len(plans), device, devices, tp, rng))
    plans.append(_disagg_plan(len(plans)))
    feasible = [p for p in plans if p["feasible"]]
    objectives = [[p["usd_per_million_tokens"], p["ttft_p90_s"], p["tpot_p90_s"], p["joules_per_token"]]
                  for p in feasible]
    for plan, on_front in zip(feasible, pareto_mask(objectives), strict=True):
        plan["pareto"] = on_front
    front = [p for p in feasible if p["pareto"]]
    knee = knee_index([[p["usd_per_million_tokens"], p["ttft_p90_s"]] for p in front])
    front[knee]["knee"] = True
    recommended = min(front, key=lambda p: p["usd_per_million_tokens"])
    recommended["recommended"] = True
    recommended["reason"] = ("cheapest plan meeting the SLO at 90% attainment\n"
                             "- TTFT p90 and TPOT p90 within their targets at its highest rate")
    return plans


def _records(count: int, *, slower: float = 1.0, itl: bool) -> list[RequestRecord]:
    """Requests arriving 0.5 s apart, `slower` stretching their latencies (one failed request)."""
    records = []
    for i in range(count):
        arrival = 0.5 * i
        first = arrival + slower * (0.2 + 0.05 * (i % 7))
        outputs = 20 + i % 13
        last = first + slower * 0.03 * (outputs - 1)
        gaps = [slower * 0.03] * (outputs - 1) if itl else None
        records.append(RequestRecord(f"r{i}", arrival, 300 + 17 * i, outputs, first_token_s=first,
                                     last_token_s=last, replica=i % 2, itl_s=gaps))
    records.append(RequestRecord("failed", 1.0, 100, 0, error="http_500: boom"))
    return records


def write_run(folder: Path, records: list[RequestRecord], *, estimated: bool, iterations: bool) -> Path:
    """A run folder (and, with `iterations`, a simulator-style iterations.csv)."""
    config = {"command": "simulate" if estimated else "bench", "model": "Meta-Llama-3.1-8B", "rate": 2.0}
    with RunWriter(folder, config, keep_partial=False) as writer:
        for record in records:
            writer.add(record)
        writer.finish(summarize(records, parse_slo(SLO), estimated=estimated))
    if iterations:
        rows = [IterationRow(replica=r, start_s=0.1 * k, duration_s=0.1, iterations=1, decode_seqs=k % 5,
                             prefill_seqs=1, prefill_tokens=512, kv_used=min(1.0, 0.02 * k), waiting=k % 3,
                             running=k % 5, preemptions=0) for k in range(200) for r in (0, 1)]
        lines = [IterationRow.csv_header(), *(row.csv_line() for row in rows)]
        (folder / "iterations.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def sim_run(tmp_path: Path) -> Run:
    return read_run(write_run(tmp_path / "sim", _records(40, itl=False), estimated=True, iterations=True))


@pytest.fixture
def real_run(tmp_path: Path) -> Run:
    return read_run(write_run(tmp_path / "real", _records(40, slower=1.1, itl=True), estimated=False,
                              iterations=False))


def _no_network(page: str) -> None:
    """The page loads nothing from outside: no script, stylesheet or image from http(s)."""
    assert not re.search(r"""<script[^>]*\ssrc=["']?https?:""", page)
    assert not re.search(r"""<link[^>]*\shref=["']?https?:""", page)
    assert not re.search(r"""<img[^>]*\ssrc=["']?https?:""", page)


def _plot_texts(page: str) -> set[str]:
    """Every "text" string of the figures' JSON (titles, annotations), decoded: plotly writes "/" as
    \\u002f."""
    return {json.loads(f'"{raw}"') for raw in re.findall(r'"text":"((?:[^"\\]|\\.)*)"', page)}


def _figure_ids(page: str) -> list[str]:
    """Ids of the plotly figure divs in the page."""
    return re.findall(r'<div id="([\w-]+)" class="plotly-graph-div"', page)


# ------------------------------------------------------------------------------------------------
# Page content
# ------------------------------------------------------------------------------------------------

def test_plan_report_has_front_table_commands_and_plots(tmp_path: Path, sim_run: Run) -> None:
    plans = make_plans()
    recommended = next(p for p in plans if p["recommended"])
    out = plan_report(plans, title="Llama-3.1-8B on azure-conv", slo=SLO, recommended=recommended,
                      recommended_run=sim_run, out_path=tmp_path / "plan" / "report.html")
    page = out.read_text()
    assert _figure_ids(page) == list(PLAN_FIGURES)
    assert page.count("Copyright 2012") == 1  # plotly.js embedded once, inline
    _no_network(page)
    assert "estimated by simulation" in page and "Llama-3.1-8B on azure-conv" in page
    front = [p for p in plans if p["pareto"]]
    assert page.count('<tr class="command">') == len(front) > 1
    for plan in front:
        assert escape(plan["label"]) in page
        assert escape(plan["command"]) in page
    off_front = next(p for p in plans if not p["pareto"])
    assert escape(off_front["command"]) not in page  # only front plans are listed with commands
    assert "cheapest plan meeting the SLO at 90% attainment" in page
    assert f"Recommended plan: {escape(recommended['label'])}" in page
    # Timelines of a simulated run with iterations.csv include its queue and KV panels.
    assert {"queue length (waiting)", "running requests", "KV cache used"} <= _plot_texts(page)


@pytest.mark.parametrize("attainment, met", [(0.95, True), (0.71, False)])
def test_plan_report_says_whether_the_whole_plan_simulation_met_the_slo(tmp_path: Path, attainment: float,
                                                                        met: bool) -> None:
    plans = make_plans()
    recommended = next(p for p in plans if p["recommended"])
    recommended["verified"] = {"rate_rps": 8.0, "delivered_rate_rps": 8.0, "requests": 400,
                               "slo_attainment": attainment, "target_attainment": 0.9, "met": met}
    page = plan_report(plans, title="t", slo=SLO, recommended=recommended, recommended_run=None,
                       out_path=tmp_path / "report.html").read_text()
    if met:
        assert "Verified: " in page and "attainment 95.0% ≥ target 90%" in page and "SLO not met" not in page
    else:
        assert "SLO not met: " in page and "attainment 71.0%, below the target 90%" in page
        assert "No plan was verified to meet the SLO" in page and "Verified: " not in page


def test_plan_report_without_verification_says_so(tmp_path: Path) -> None:
    plans = make_plans()
    recommended = next(p for p in plans if p["recommended"])
    page = plan_report(plans, title="t", slo=SLO, recommended=recommended, recommended_run=None,
                       out_path=tmp_path / "report.html").read_text()
    assert "Not verified by a whole-plan simulation" in page and "Verified: " not in page


def test_plan_report_without_recommendation_or_run(tmp_path: Path) -> None:
    plans = make_plans(seed=1)
    for plan in plans:
        plan["recommended"] = False
    out = plan_report(plans, title="nothing fits", slo=None, recommended=None, recommended_run=None,
                      out_path=tmp_path / "report.html")
    page = out.read_text()
    assert _figure_ids(page) == ["pareto-ttft", "pareto-energy"]
    assert "No plan meets the SLO" in page


def test_runs_report_compares_estimated_with_measured(tmp_path: Path, sim_run: Run, real_run: Run) -> None:
    out = runs_report([sim_run, real_run], title="validate", out_path=tmp_path / "cmp.html")
    page = out.read_text()
    assert _figure_ids(page) == list(RUNS_FIGURES)
    _no_network(page)
    assert "estimated by simulation" in page and "measured" in page
    assert "Per request: sim vs real" in page  # the measured run is the reference
    assert "real (measured), ms" in page and "sim (estimated), ms" in page
    # 40 requests completed in both runs are matched by id; latencies differ by the 1.1 stretch.
    assert "E2E: n=40, median |error| 9.1%" in page
    for label in ("TTFT p90 (ms)", "E2E p99 (ms)", "goodput (req/s)", "sim vs real"):
        assert label in page
    # ITL samples exist only in the measured run's records.
    assert "No ITL samples in sim" in page


def test_runs_report_of_one_run_uses_the_records_alone(tmp_path: Path, real_run: Run) -> None:
    page = runs_report([real_run], title="one", out_path=tmp_path / "one.html").read_text()
    assert _figure_ids(page) == ["cdf", "timeline"]
    texts = _plot_texts(page)
    assert {"output tokens/s", "completions/s", "requests in flight"} <= texts
    assert "KV cache used" not in texts and "Per request" not in page


def test_runs_without_common_ids_get_no_scatter(tmp_path: Path, sim_run: Run) -> None:
    other = [RequestRecord(f"x{i}", float(i), 10, 5, first_token_s=i + 0.1, last_token_s=i + 0.5)
             for i in range(5)]
    other_run = read_run(write_run(tmp_path / "other", other, estimated=False, iterations=False))
    page = runs_report([sim_run, other_run], title="t", out_path=tmp_path / "x.html").read_text()
    assert "share no completed request id" in page
    assert "per-request" not in _figure_ids(page)


def test_malformed_iterations_and_summary_are_user_errors(tmp_path: Path, sim_run: Run) -> None:
    (sim_run.path / "iterations.csv").write_text("replica,when\n0,1.0\n")
    with pytest.raises(UserError, match="iterations.csv: missing columns: start_s, duration_s"):
        runs_report([sim_run], title="t", out_path=tmp_path / "x.html")
    (sim_run.path / "iterations.csv").unlink()
    (sim_run.path / "summary.json").write_text(json.dumps({"requests": "many"}))
    with pytest.raises(UserError, match="summary.json: not a run summary"):
        runs_report([read_run(sim_run.path)], title="t", out_path=tmp_path / "x.html")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def test_cli_writes_into_the_run_folder_for_one_run(sim_run: Run) -> None:
    result = runner.invoke(app, ["report", str(sim_run.path)])
    assert result.exit_code == 0, result.output
    assert (sim_run.path / "report.html").is_file()
    assert "report.html" in result.output


def test_cli_writes_to_the_current_folder_for_several_runs(tmp_path: Path, sim_run: Run, real_run: Run,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", str(sim_run.path), str(real_run.path), "--title", "A vs B"])
    assert result.exit_code == 0, result.output
    assert "<title>A vs B</title>" in (tmp_path / "report.html").read_text()
    result = runner.invoke(app, ["report", str(sim_run.path), "--out", str(tmp_path / "deep" / "r.html")])
    assert result.exit_code == 0 and (tmp_path / "deep" / "r.html").is_file()


def test_cli_missing_or_malformed_run_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "does not exist" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "requests.jsonl").write_text("{not json\n")
    result = runner.invoke(app, ["report", str(bad)])
    assert result.exit_code == 2 and "requests.jsonl:1" in result.output


# ------------------------------------------------------------------------------------------------
# Headless Chromium
# ------------------------------------------------------------------------------------------------

def _assert_rendered(dom: str, figure_ids: tuple[str, ...]) -> None:
    """Each figure div holds plotly's rendered SVG."""
    starts = [(dom.index(f'id="{fid}"'), fid) for fid in figure_ids]
    bounds = [start for start, _ in starts[1:]] + [len(dom)]
    for (start, fid), end in zip(starts, bounds, strict=True):
        assert 'class="main-svg"' in dom[start:end], f"figure {fid} was not drawn"


def test_pages_render_in_headless_chromium(tmp_path: Path, sim_run: Run, real_run: Run) -> None:
    plans = make_plans()
    recommended = next(p for p in plans if p["recommended"])
    plan_page = plan_report(plans, title="plan", slo=SLO, recommended=recommended, recommended_run=sim_run,
                            out_path=tmp_path / "plan.html")
    runs_page = runs_report([sim_run, real_run], title="runs", out_path=tmp_path / "runs.html")
    for page, figures in ((plan_page, PLAN_FIGURES), (runs_page, RUNS_FIGURES)):
        dom, errors = render_in_chromium(page, tmp_path / f"profile-{page.stem}")
        assert errors == [], f"{page.name}: console errors {errors}"
        _assert_rendered(dom, figures)
