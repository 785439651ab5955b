"""Plan search end to end: the aggregated-vs-disaggregated choice follows from simulated goodput,
resume, Ray, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import tempfile

import pytest
import yaml
from typer.testing import CliRunner

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app, console
from paretoserve.errors import UserError
from paretoserve.metrics.slo import parse_slo
from paretoserve.perf.memory import kv_capacity
from paretoserve.perf.roofline import Roofline
from paretoserve.plan import api as plan_api
from paretoserve.plan.capacity import max_rate_under_slo
from paretoserve.plan.executor import run_units
from paretoserve.plan.search import PlanSearch, recommendation_order, run_search, units_of
from paretoserve.plan.space import SearchSpace, enumerate_plans
from paretoserve.plan.units import UnitContext, cover_span
from paretoserve.runs import read_run
from paretoserve.sim.api import simulate
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.deployment import kv_link
from paretoserve.workload.synthetic import build_workload, rescale
from paretoserve.workload.traces import load_trace
from prereq import missing

MODEL, DEVICE = "Meta-Llama-3.1-8B", "h100_sxm"


def _engine() -> EngineConfig:
    model, device = load_model(MODEL), load_device(DEVICE)
    cap = kv_capacity(model, device)
    return EngineConfig(step_model=Roofline(model, device), kv_tokens=cap.tokens,
                        kv_bytes_per_token=cap.bytes_per_token, max_model_len=model.max_position_embeddings)


def _full_cluster_capacity(requests, slo, disagg: bool) -> float:
    """Highest rate at which a whole 2-device cluster meets the SLO, by full simulation (no unit
    decomposition): 2 aggregated replicas behind round robin, or 1 prefill + 1 decode replica."""
    engine = _engine()
    bandwidth, latency, _ = kv_link(load_device(DEVICE), 1, 1, 1, 1, 1)

    def attainment(rate: float) -> float:
        trace = cover_span(rescale(requests, rate=rate), 20.0)
        if disagg:
            cfg = DisaggConfig(1, 1, engine, engine, engine.kv_bytes_per_token, bandwidth, latency)
            records = list(simulate(trace, disagg=cfg))
        else:
            records = list(simulate(trace, step_model=engine.step_model, kv_tokens=engine.kv_tokens,
                                    replicas=2, kv_bytes_per_token=engine.kv_bytes_per_token))
        return sum(slo.request_ok(r) for r in records) / len(trace)

    return max_rate_under_slo(attainment, target=slo.attainment_target, low=0.05, high=0.5, rel_tol=0.05).rate_rps


@pytest.mark.parametrize("traffic", ["prompt-heavy", "decode-heavy"])
def test_choice_between_aggregated_and_disaggregated_follows_simulated_goodput(traffic):
    if traffic == "prompt-heavy":  # long prompts, a few output tokens, tight TTFT
        requests = build_workload(None, arrival="poisson", rate=1.0, requests=120, prompt="uniform:3000:6000",
                                  output="uniform:2:8", seed=1)
        slo = parse_slo("ttft_p90=500ms,tpot_p90=200ms")
    else:  # long outputs after mid-size prompts, tight TPOT: prefill chunks would stall decodes
        requests = build_workload(None, arrival="poisson", rate=1.0, requests=120, prompt="uniform:1500:3000",
                                  output="uniform:200:400", seed=1)
        slo = parse_slo("ttft_p90=3s,tpot_p90=30ms")
    # Same device count on both sides: 2 aggregated replicas, or one prefill + one decode replica.
    space = SearchSpace(devices=[DEVICE], tp=[1], max_devices=2, max_pool_replicas=1)
    outcome = run_search(PlanSearch(MODEL, "synthetic", requests, slo, space, rate=None, executor="serial"))
    by_kind = {("disagg" if r["plan"]["disagg"] else "agg"): r for r in outcome.rows}
    planner_prefers_disagg = (by_kind["disagg"]["goodput_per_device"] > by_kind["agg"]["goodput_per_device"])
    recommended = outcome.recommended
    assert recommended is not None
    assert (recommended["plan"]["disagg"] is not None) == planner_prefers_disagg

    # Whole-cluster simulation (no decomposition) agrees on the winner. Both traffics were chosen so
    # it is clear (> 15% apart): aggregated wins the prompt-heavy case (pools idle on decode),
    # disaggregated the decode-heavy one.
    agg = _full_cluster_capacity(requests, slo, disagg=False)
    disagg = _full_cluster_capacity(requests, slo, disagg=True)
    assert max(agg, disagg) > 1.15 * min(agg, disagg), (agg, disagg)
    assert planner_prefers_disagg == (disagg > agg), (traffic, agg, disagg, by_kind)


def test_resume_reuses_every_unit(tmp_path):
    requests = build_workload("azure-conv", requests=60)
    space = SearchSpace(devices=[DEVICE, "a100_sxm"], tp=[1, 2], max_devices=4, max_pool_replicas=1)
    search = PlanSearch(MODEL, "azure-conv", requests, parse_slo("ttft_p90=2s,tpot_p90=100ms"), space,
                        executor="serial", resume_file=tmp_path / "evaluations.jsonl", min_span_s=5.0)
    first = run_search(search)
    lines = (tmp_path / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == first.units
    second = run_search(search)
    assert (tmp_path / "evaluations.jsonl").read_text().splitlines() == lines  # nothing re-evaluated
    assert [r["label"] for r in first.rows] == [r["label"] for r in second.rows]
    assert [r["max_rate_rps"] for r in first.rows] == [r["max_rate_rps"] for r in second.rows]


@pytest.fixture
def ray_env(monkeypatch):
    """A local Ray instance without token auth, writing under a short temporary folder (Unix socket
    paths are limited to 107 bytes, which pytest's tmp_path can exceed)."""
    if importlib.util.find_spec("ray") is None:
        missing("ray is not installed (make install-test)")
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    monkeypatch.setenv("TMPDIR", folder)
    yield
    shutil.rmtree(folder, ignore_errors=True)


def test_ray_executor_gives_the_same_results_as_serial(ray_env):
    requests = build_workload("azure-conv", requests=40)
    space = SearchSpace(devices=[DEVICE], tp=[1, 2], max_devices=2, disagg=False)
    units = [u for plan in enumerate_plans(space, load_model(MODEL)).plans for u in units_of(plan)]
    ctx = UnitContext(MODEL, tuple(requests), parse_slo("ttft_p90=2s,tpot_p90=100ms"), min_span_s=5.0)
    serial = run_units(units, ctx, executor="serial")
    with_ray = run_units(units, ctx, executor="ray", workers=2)
    assert serial == with_ray


def test_fixed_rate_mode_sizes_replicas_to_the_rate():
    requests = build_workload("azure-conv", requests=80)
    space = SearchSpace(devices=[DEVICE], tp=[1], max_devices=16, disagg=False)
    slo = parse_slo("ttft_p90=2s,tpot_p90=100ms")
    capacity = run_search(PlanSearch(MODEL, "azure-conv", requests, slo, space, executor="serial",
                                     min_span_s=5.0)).rows[0]["max_rate_rps"]
    rate = 2.5 * capacity
    row = run_search(PlanSearch(MODEL, "azure-conv", requests, slo, space, rate=rate, executor="serial",
                                min_span_s=5.0)).rows[0]
    assert row["plan"]["dp"] == 3  # ceil(2.5)
    assert row["max_rate_rps"] >= rate


def test_budget_no_plan_fits_names_the_cheapest_that_would():
    requests = build_workload("azure-conv", requests=40)
    space = SearchSpace(devices=["l40s"], tp=[1, 2, 4, 8], max_devices=1, disagg=False)
    # 70.6e9 bf16 parameters are 141 GB: more than 2 × 48 GB, less than 0.9 × 4 × 48 GB
    with pytest.raises(UserError, match=r"no plan .* feasible.*smallest plan that fits in memory.*needs 4 devices"):
        run_search(PlanSearch("Meta-Llama-3.1-70B", "azure-conv", requests, parse_slo("ttft_p90=2s"), space))


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(console, "width", 250)


def test_plan_cli_writes_front_plans_and_report(tmp_path, wide):
    out = tmp_path / "plan"
    result = CliRunner().invoke(app, [
        "plan", "--model", MODEL, "--trace", "azure-conv", "--requests", "60", "--slo", "ttft_p90=2s,tpot_p90=100ms",
        "--gpus", "h100_sxm,l40s", "--budget", "2", "--tp", "1,2", "--max-pool", "1", "--executor", "serial",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Recommended:" in result.output and "report:" in result.output
    rows = [json.loads(line) for line in (out / "plans.jsonl").read_text().splitlines()]
    front = (out / "front.csv").read_text().splitlines()
    assert len(front) - 1 == sum(r["pareto"] for r in rows)
    assert sum(r["recommended"] for r in rows) == 1
    recommended = next(r for r in rows if r["recommended"])
    assert recommended["command"].startswith("paretoserve simulate")
    assert (out / "recommended" / "requests.jsonl").exists()
    assert os.path.getsize(out / "report.html") > 100_000


def test_plan_cli_bad_inputs_are_one_line_errors(tmp_path):
    runner = CliRunner()
    for args, message in [
        (["--slo", "ttft=fast"], "SLO"),
        (["--gpus", "h900"], "unknown hardware"),
        (["--tp", "two"], "comma-separated integers"),
        (["--objective", "speed"], "unknown objective"),
    ]:
        result = runner.invoke(app, ["plan", "--model", MODEL, "--requests", "30", "--out", str(tmp_path / "p"),
                                     *args])
        assert result.exit_code == 2, (args, result.output)
        assert message.lower() in result.output.lower(), (args, result.output)
        assert "Traceback" not in result.output


def test_nsga2_finds_the_grid_optimum_with_fewer_simulations():
    requests = build_workload("azure-conv", requests=80)
    space = SearchSpace(devices=[DEVICE, "a100_sxm", "l40s"], tp=[1, 2, 4], max_num_seqs=[128, 256],
                        max_devices=4, max_pool_replicas=1)
    slo = parse_slo("ttft_p90=1s,tpot_p90=60ms")
    grid = run_search(PlanSearch(MODEL, "azure-conv", requests, slo, space, executor="serial", search="grid",
                                 min_span_s=5.0))
    nsga = run_search(PlanSearch(MODEL, "azure-conv", requests, slo, space, executor="serial", search="nsga2",
                                 trials=100, min_span_s=5.0))
    assert nsga.units < grid.units
    best = grid.recommended["usd_per_million_tokens"]
    assert nsga.recommended["usd_per_million_tokens"] <= 1.05 * best
    # Every plan NSGA-II puts on its front is a real plan of the space, with the grid's figures.
    grid_rows = {r["label"]: r for r in grid.rows}
    for row in nsga.front:
        assert row["max_rate_rps"] == grid_rows[row["label"]]["max_rate_rps"]


def test_repeated_copies_get_fresh_prefix_hashes():
    """cover_span's repeats must not hit the prefix cache of the original sample (or of each other),
    but keep the sharing between requests within a copy."""
    sample = rescale(load_trace("mooncake-conv")[:60], rate=50.0)
    hashes = [h for r in sample for h in r.prefix_hashes]
    assert len(set(hashes)) < len(hashes)  # the sample shares prefixes, so the check means something
    covered = cover_span(sample, 20.0)
    copies = len(covered) // len(sample)
    assert copies >= 2 and len(covered) == copies * len(sample)
    seen: set[int] = set()
    for c in range(copies):
        block = covered[c * len(sample):(c + 1) * len(sample)]
        block_hashes = {h for r in block for h in r.prefix_hashes}
        assert not block_hashes & seen, f"copy {c} reuses a hash of an earlier copy"
        seen |= block_hashes
        mapping = {}
        for original, copy in zip(sample, block, strict=True):
            assert len(copy.prefix_hashes) == len(original.prefix_hashes)
            for h, g in zip(original.prefix_hashes, copy.prefix_hashes, strict=True):
                assert mapping.setdefault(h, g) == g  # equal blocks stay equal within a copy
        assert len(set(mapping.values())) == len(mapping)  # distinct blocks stay distinct


def _fixed_rate_search(tmp_path):
    requests = load_trace("azure-conv")[:100]
    space = SearchSpace(devices=[DEVICE], tp=[1, 2, 4], max_devices=8, disagg=False)
    search = PlanSearch(MODEL, "azure-conv", requests, parse_slo("ttft_p90=2s,tpot_p90=100ms"), space, rate=20.0,
                        executor="serial", min_span_s=5.0)
    return search, run_search(search)


def _attainment(run_dir, slo) -> float:
    """SLO attainment recomputed from a run folder's requests.jsonl."""
    records = read_run(run_dir).records
    return sum(slo.request_ok(r) for r in records) / len(records)


def test_verification_compares_and_moves_on_to_the_next_plan(tmp_path):
    """Verified under a stricter SLO than the search used, the cheapest plan (tp1) misses it in its
    whole-plan simulation; the next in recommendation order (tp2) meets it and becomes the
    recommendation. Both whole-plan runs are real simulations, compared with the target."""
    search, outcome = _fixed_rate_search(tmp_path)
    strict = dataclasses.replace(search, slo=parse_slo("ttft_p90=150ms,tpot_p90=12ms"))
    order = [r["label"] for r in recommendation_order(outcome.rows)]
    out = tmp_path / "plan"
    tried = plan_api._verify_in_order(outcome, strict, out)
    assert [v["label"] for v in tried] == order[:2]
    first, second = tried
    assert first["met"] is False and second["met"] is True
    assert first["slo_attainment"] < strict.slo.attainment_target <= second["slo_attainment"]
    assert first["slo_attainment"] == pytest.approx(_attainment(out / "verify" / "1", strict.slo))
    assert second["slo_attainment"] == pytest.approx(_attainment(out / "recommended", strict.slo))
    assert outcome.recommended["label"] == order[1] and sum(r["recommended"] for r in outcome.rows) == 1
    assert "missed the SLO" in outcome.recommended["reason"] and order[0] in outcome.recommended["reason"]
    assert second["delivered_rate_rps"] == pytest.approx(20.0, rel=1e-9)


def test_no_plan_verified_is_said_plainly(tmp_path):
    search, outcome = _fixed_rate_search(tmp_path)
    impossible = dataclasses.replace(search, slo=parse_slo("ttft_p90=5ms,tpot_p90=1ms"))
    cheapest = recommendation_order(outcome.rows)[0]["label"]
    tried = plan_api._verify_in_order(outcome, impossible, tmp_path / "plan")
    assert len(tried) == 3 and not any(v["met"] for v in tried)  # every plan of the space was tried
    assert all(v["slo_attainment"] < impossible.slo.attainment_target for v in tried)
    assert outcome.recommended["label"] == cheapest and outcome.recommended["verified"]["met"] is False


def test_plan_cli_says_which_device_types_have_no_plan_and_why(tmp_path, wide):
    """Qwen3-32B (65 GB of bf16 weights) does not fit on one L40S (48 GB), and two cost $3.72/h,
    over a $3.50/h budget; one H100 (80 GB) fits within it."""
    out = tmp_path / "plan"
    result = CliRunner().invoke(app, [
        "plan", "--model", "Qwen3-32B", "--trace", "azure-conv", "--requests", "60", "--gpus", "h100_sxm,l40s",
        "--budget-usd", "3.5", "--tp", "1,2", "--no-disagg", "--executor", "serial", "--out", str(out)])
    assert result.exit_code == 0, result.output
    by_device = {e["device"]: e for e in yaml.safe_load((out / "config.yaml").read_text())["by_device"]}
    assert set(by_device) == {"h100_sxm", "l40s"}
    assert by_device["h100_sxm"]["best"].startswith("1×h100_sxm tp1") and by_device["h100_sxm"]["reason"] is None
    l40s = by_device["l40s"]
    assert l40s["best"] is None
    assert "weights and runtime do not fit in memory" in l40s["reason"] and "over the dollar budget" in l40s["reason"]
    assert "2×l40s tp2" in l40s["reason"] and "$3.72/h" in l40s["reason"]
    assert "l40s: no plan" in result.output and "do not fit in memory" in result.output
    # the verification line carries its comparison and the rate delivered
    verified = next(json.loads(line) for line in (out / "plans.jsonl").read_text().splitlines()
                    if json.loads(line)["recommended"])["verified"]
    assert verified["met"] is (verified["slo_attainment"] >= verified["target_attainment"])
    assert verified["slo_attainment"] == pytest.approx(_attainment(out / "recommended",
                                                                   parse_slo("ttft_p90=2s,tpot_p90=100ms")))
    assert verified["delivered_rate_rps"] == pytest.approx(verified["rate_rps"], rel=1e-9)
    assert ("Verified:" in result.output) is verified["met"]


def test_fixed_rate_names_the_device_type_over_budget():
    """At 60 req/s within 2 devices: an H100 replica serves about 59 req/s, an L40S one about 20, so
    the L40S plans need more devices than the budget allows."""
    requests = load_trace("azure-conv")[:100]
    space = SearchSpace(devices=[DEVICE, "l40s"], tp=[1], max_devices=2, disagg=False)
    slo = parse_slo("ttft_p90=2s,tpot_p90=100ms")
    capacity = {r["plan"]["device"]: r["max_rate_rps"] for r in run_search(
        PlanSearch(MODEL, "azure-conv", requests, slo, space, executor="serial", min_span_s=5.0)).rows}
    outcome = run_search(PlanSearch(MODEL, "azure-conv", requests, slo, space, rate=60.0, executor="serial",
                                    min_span_s=5.0))
    by_device = {e["device"]: e for e in outcome.by_device}
    assert by_device[DEVICE]["devices"] == math.ceil(60.0 / capacity[DEVICE]) <= 2
    reason = by_device["l40s"]["reason"]
    assert by_device["l40s"]["best"] is None and reason.startswith("over the device budget of 2 (--budget) at 60 req/s")
    assert f"needs {math.ceil(60.0 / capacity['l40s'])} devices" in reason
