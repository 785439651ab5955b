"""`plan` over attention-DP / EP layouts of MoE models (as `simulate --dp-attention --ep` runs them),
pruned by the layout's own validation; dense models ignore those choices."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from paretoserve.catalog.model import load_model
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.metrics.slo import parse_slo
from paretoserve.plan.search import PlanSearch, run_search
from paretoserve.plan.space import SearchSpace, enumerate_plans
from paretoserve.plan.units import simulate_config
from paretoserve.sim.deployment import build_deployment
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.synthetic import build_workload

MOE = "Qwen3-30B-A3B"  # 128 routed experts, 32 query / 4 KV heads, 48 layers


def test_moe_space_keeps_valid_layouts_and_prunes_the_rest():
    """Hand count for tp ∈ {1, 2}, dp_attention ∈ {1, 3}, ep ∈ {1, 2, 3} within 6 GPUs: a layout
    needs ep | tp × dp (ParallelLayout) and ep | 128 experts (ParallelLayout.check), so EP 3 is never
    valid (3 ∤ 128) and EP 2 needs tp × dp even. Valid: tp1 dpa1 ep1, tp1 dpa3 ep1, tp2 dpa1 ep1/ep2,
    tp2 dpa3 ep1/ep2 — 6 plans on 1, 3, 2, 2, 6, 6 GPUs (tp × dp_attention × pp)."""
    space = SearchSpace(devices=["h100_sxm"], tp=[1, 2], dp_attention=[1, 3], ep=[1, 2, 3], max_devices=6,
                        disagg=False)
    enum = enumerate_plans(space, load_model(MOE))
    got = sorted((p.engine.tp, p.engine.dp_attention, p.engine.ep, p.devices) for p in enum.plans)
    assert got == [(1, 1, 1, 1), (1, 3, 1, 3), (2, 1, 1, 2), (2, 1, 2, 2), (2, 3, 1, 6), (2, 3, 2, 6)]
    assert enum.pruned["parallelism does not divide the model"] == 12 - 6
    assert not enum.notes


def test_dense_model_ignores_attention_dp_and_ep_with_a_note():
    space = SearchSpace(devices=["h100_sxm"], tp=[1, 2], dp_attention=[1, 2], ep=[1, 2], max_devices=8,
                        disagg=False)
    enum = enumerate_plans(space, load_model("Meta-Llama-3.1-8B"))
    assert sorted((p.engine.tp, p.engine.dp_attention, p.engine.ep) for p in enum.plans) == [(1, 1, 1), (2, 1, 1)]
    assert len(enum.notes) == 1 and "dense" in enum.notes[0] and "--ep" in enum.notes[0]


def test_unit_engine_is_simulate_s_attention_dp_rank():
    """A plan's unit is built as `simulate --tp 1 --dp-attention 2 --ep 2` builds its deployment: one
    rank of tp × pp = 1 GPU, 2 ranks behind the router, KV capacity of that layout."""
    space = SearchSpace(devices=["h100_sxm"], tp=[1], dp_attention=[2], ep=[2], max_devices=2, disagg=False)
    (plan,) = enumerate_plans(space, load_model(MOE)).plans
    deployment = build_deployment(simulate_config(MOE, plan.engine, 0.9))
    cli = build_deployment(SimulateConfig(model=MOE, hardware="h100_sxm", tp=1, dp_attention=2, ep=2))
    alone = build_deployment(SimulateConfig(model=MOE, hardware="h100_sxm", tp=1))
    assert deployment.replicas == cli.replicas == 2 and deployment.engine.devices == 1
    assert deployment.engine.kv_tokens == cli.engine.kv_tokens
    assert deployment.engine.kv_tokens > alone.engine.kv_tokens  # EP 2 halves the routed experts per GPU
    assert plan.devices == 2


def test_moe_plan_search_returns_ep_plans_with_their_device_count(tmp_path):
    """Qwen3-30B-A3B on up to 2 H100s: TP 2, DP-attention 2 with and without EP 2, and 1 GPU. Every
    plan row's devices = tp × dp_attention × pp (hand check), its capacity is dp_attention × its
    unit's (one rank) capacity, and the reproduce command carries the layout flags."""
    requests = build_workload("azure-conv", requests=40)
    space = SearchSpace(devices=["h100_sxm"], tp=[1, 2], dp_attention=[1, 2], ep=[1, 2], max_devices=2,
                        disagg=False)
    outcome = run_search(PlanSearch(MOE, "azure-conv", requests, parse_slo("ttft_p90=2s,tpot_p90=100ms"), space,
                                    executor="serial", min_span_s=5.0))
    rows = {(r["plan"]["tp"], r["dp_attention"], r["ep"]): r for r in outcome.rows}
    assert set(rows) == {(1, 1, 1), (1, 2, 1), (1, 2, 2), (2, 1, 1), (2, 1, 2)}
    for (tp, dpa, _), row in rows.items():
        assert row["devices"] == tp * dpa * row["plan"]["pp"]
    ep_row = rows[(1, 2, 2)]
    assert ep_row["devices"] == 2 and ep_row["max_rate_rps"] > 0
    unit = next(u for k, u in outcome.unit_results.items() if "|dpa2|ep2|" in k)
    assert ep_row["max_rate_rps"] == 2 * unit.capacity_rps
    assert "--dp-attention 2 --ep 2" in ep_row["command"]


def test_plan_cli_layout_flags_and_columns(tmp_path):
    out = tmp_path / "plan"
    result = CliRunner().invoke(app, [
        "plan", "--model", MOE, "--requests", "30", "--gpus", "h100_sxm", "--budget", "2", "--tp", "1",
        "--dp-attention", "2", "--ep", "2", "--no-disagg", "--no-verify", "--executor", "serial",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (out / "plans.jsonl").read_text().splitlines()]
    assert (row["devices"], row["dp_attention"], row["ep"]) == (2, 2, 2)
    front = list(csv.DictReader((out / "front.csv").read_text().splitlines()))
    assert front and front[0]["dp_attention"] == "2" and front[0]["ep"] == "2"
