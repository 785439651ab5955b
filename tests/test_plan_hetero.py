"""Heterogeneous replicas in `plan` (issue 15 item 4): pipeline stages on different device types and
attention offload, priced by the partitioner's stage model, marked as not simulated, never recommended."""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from paretoserve.catalog.device import load_device
from paretoserve.catalog.links import load_link
from paretoserve.catalog.model import load_model
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.metrics.slo import parse_slo
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.plan.hetero import ANALYTIC, OFFLOAD, PIPELINE, HeteroPlan, evaluate_hetero, hetero_rows
from paretoserve.plan.search import mark_front
from paretoserve.plan.space import SearchSpace
from paretoserve.workload.synthetic import build_workload

MODEL = "Meta-Llama-3.1-8B"  # 32 layers, hidden 4096
LINK = "50GB/s@20us"


def _requests():
    """Every request 1000 prompt + 200 output tokens: mean and p90 prompt 1000, mean output 200."""
    return build_workload(None, arrival="poisson", rate=1.0, requests=50, prompt="fixed:1000", output="fixed:200")


def _seconds(device: str, shape: StepShape) -> tuple[float, float, float]:
    """(embedding, one decoder layer, LM head) seconds of a step on `device`, from the roofline's operators."""
    model = load_model(MODEL)
    ops = Roofline(model, load_device(device)).step_time(shape).ops
    embed = sum(o.seconds for o in ops if o.name == "embed")
    head = sum(o.seconds for o in ops if o.name == "lm_head")
    rest = sum(o.seconds for o in ops if o.name not in ("embed", "lm_head"))
    return embed, rest / model.num_layers, head


def test_pipeline_candidate_matches_a_hand_calculation():
    """h100_sxm → l40s, max_num_seqs 64, 2 micro-batches in flight. By hand: b = 64 / 2 = 32 decodes
    at context 1000 + 200/2 = 1100 with p = 32 × 1000 / 200 = 160 prompt tokens per step; the cut after
    k layers gives stages s1 = embed + k layers (H100), s2 = (32 − k) layers + head (L40S) and a transfer
    of 20 µs + (32 + 160) × 4096 × 2 B / 50 GB/s; the period T = max(s1, x, s2, (s1 + x + s2) / 2);
    capacity = min(32 / 200, 160 / 1000) / T; TPOT = 2T; TTFT = the same sums for one 1000-token prefill.
    The planner's cut is the k of the highest capacity (every cut of an 8B model fits both devices)."""
    step = StepShape(prefill=(PrefillChunk(160, 0, False),), decode=(1100,) * 32)
    first = StepShape(prefill=(PrefillChunk(1000, 0, True),))
    e1, l1, _ = _seconds("h100_sxm", step)
    _, l2, h2 = _seconds("l40s", step)
    x = 20e-6 + (32 + 160) * 4096 * 2 / 50e9

    def period(k: int) -> float:
        s1, s2 = e1 + k * l1, (32 - k) * l2 + h2
        return max(s1, x, s2, (s1 + x + s2) / 2)

    k = min(range(0, 33), key=period)
    assert 0 < k < 32  # a real split: both devices hold layers
    t = period(k)
    fe1, fl1, _ = _seconds("h100_sxm", first)
    _, fl2, fh2 = _seconds("l40s", first)
    ttft = fe1 + k * fl1 + 20e-6 + 1000 * 4096 * 2 / 50e9 + (32 - k) * fl2 + fh2

    plan = HeteroPlan(PIPELINE, ("h100_sxm", "l40s"), max_num_seqs=64)
    got = evaluate_hetero(plan, load_model(MODEL), _requests(), link=load_link(LINK))
    assert (got.decode_batch, got.prompt_tokens_per_step, got.context_tokens) == (32, 160, 1100)
    assert got.capacity_rps == pytest.approx(0.16 / t, rel=1e-3)
    assert got.tpot_s == pytest.approx(2 * t, rel=1e-3)
    assert got.ttft_s == pytest.approx(ttft, rel=1e-6)
    assert got.e2e_s == pytest.approx(ttft + 199 * 2 * t, rel=1e-3)

    # Its row: the two devices' prices, dollars per million output tokens at that capacity.
    space = SearchSpace(devices=["h100_sxm"], hetero_stages=[["h100_sxm", "l40s"]], max_num_seqs=[64],
                        hetero_link=LINK, disagg=False)
    notes: list[str] = []
    (row,) = hetero_rows(space, load_model(MODEL), _requests(), parse_slo("ttft_p90=2s,tpot_p90=100ms"), None, notes)
    usd = 2.99 + 1.861
    assert row["usd_per_hour"] == pytest.approx(usd)
    assert row["usd_per_million_tokens"] == pytest.approx(usd / (0.16 / t * 200 * 3600) * 1e6, rel=1e-3)
    assert row["devices"] == 2 and row["evaluation"] == ANALYTIC and "not simulated" in notes[0]
    assert row["plan"]["split"] == f"@layers.{k}"  # named by the first block of the second stage


def test_fixed_rate_sizes_heterogeneous_replicas_and_slo_misses_have_no_capacity():
    model, requests = load_model(MODEL), _requests()
    space = SearchSpace(devices=["h100_sxm"], hetero_stages=[["h100_sxm", "l40s"]], max_num_seqs=[64],
                        hetero_link=LINK, max_devices=64, disagg=False)
    slo = parse_slo("ttft_p90=2s,tpot_p90=100ms")
    (one,) = hetero_rows(space, model, requests, slo, None, [])
    (sized,) = hetero_rows(space, model, requests, slo, 2.5 * one["max_rate_rps"], [])
    assert sized["plan"]["dp"] == 3 and sized["devices"] == 6  # ceil(2.5) replicas of 2 devices
    (missed,) = hetero_rows(space, model, requests, parse_slo("ttft_p90=2s,tpot_p90=1ms"), None, [])
    assert missed["max_rate_rps"] == 0 and not missed["feasible"]


def test_attention_offload_holds_kv_on_the_attention_device():
    """Llama-3.1-8B's KV is 32 layers × 8 heads × 128 × 2 × 2 B = 128 KiB per token; 256 sequences at
    context 1100 need 36.9 GB — within 0.9 × 47.8 GB of an L40S — and 1024 need 147.6 GB, which is not."""
    model = load_model(MODEL)
    fits = evaluate_hetero(HeteroPlan(OFFLOAD, ("h100_sxm", "l40s"), max_num_seqs=256), model, _requests(),
                           link=load_link(LINK))
    assert fits.capacity_rps > 0 and fits.reason == ""
    too_many = evaluate_hetero(HeteroPlan(OFFLOAD, ("h100_sxm", "l40s"), max_num_seqs=1024), model, _requests(),
                               link=load_link(LINK))
    assert too_many.capacity_rps == 0 and "does not fit on l40s" in too_many.reason


def test_models_the_stage_model_cannot_split_get_a_note_not_a_crash():
    """Nemotron-H mixes Mamba and attention layers: llm_chain refuses it, the plan says so once."""
    space = SearchSpace(devices=["h100_sxm"], hetero_stages=[["h100_sxm", "l40s"]], max_num_seqs=[64, 128],
                        disagg=False)
    notes: list[str] = []
    rows = hetero_rows(space, load_model("Nemotron-H-56B-Base-8K"), _requests(), parse_slo("ttft_p90=2s"), None, notes)
    assert rows == []
    refusals = [n for n in notes if "not evaluated" in n]
    assert len(refusals) == 1 and "kinds of layers" in refusals[0]


def test_analytic_rows_are_never_recommended():
    """A cheaper analytic row may sit on the front, but the recommendation is the cheapest simulated one."""
    def row(cost: float, evaluation: str) -> dict[str, object]:
        return {"feasible": True, "usd_per_million_tokens": cost, "ttft_p90_s": 1.0, "tpot_p90_s": 0.05,
                "joules_per_token": 1.0, "devices": 2, "evaluation": evaluation, "label": evaluation,
                "max_rate_rps": 1.0, "usd_per_million_total_tokens": cost, "plan": {"disagg": None},
                "pareto": False, "knee": False, "recommended": False, "reason": ""}

    rows = [row(0.1, ANALYTIC), row(0.2, "simulated")]
    mark_front(rows, ("cost", "ttft"))
    assert rows[0]["pareto"] and not rows[0]["recommended"]
    assert rows[1]["recommended"] and "heterogeneous candidate" in rows[1]["reason"]


def test_plan_cli_heterogeneous_options(tmp_path):
    out = tmp_path / "plan"
    result = CliRunner().invoke(app, [
        "plan", "--model", MODEL, "--requests", "30", "--gpus", "h100_sxm", "--budget", "2", "--tp", "1",
        "--no-disagg", "--no-verify", "--executor", "serial", "--hetero-stages", "h100_sxm+l40s",
        "--attention-offload", "h100_sxm+l40s", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not simulated" in result.output
    rows = [json.loads(line) for line in (out / "plans.jsonl").read_text().splitlines()]
    kinds = sorted(r["plan"].get("kind", "simulated") for r in rows)
    assert kinds == ["attention_offload", "hetero_pp", "simulated"]
    assert all(r["evaluation"] == ANALYTIC for r in rows if "kind" in r["plan"])
    assert next(r for r in rows if r["recommended"])["evaluation"] == "simulated"
    front = list(csv.DictReader((out / "front.csv").read_text().splitlines()))
    assert {f["evaluation"] for f in front} <= {"simulated", ANALYTIC}
    assert math.isclose(next(r for r in rows if r["plan"].get("kind") == "hetero_pp")["usd_per_hour"], 2.99 + 1.861)


@pytest.mark.parametrize("args, message", [
    (["--hetero-stages", "h100_sxm"], "at least 2 stages"),
    (["--attention-offload", "h100_sxm+l40s+l40s"], "2 devices"),
    (["--hetero-stages", "h100_sxm+h900"], "unknown hardware"),
    (["--hetero-stages", "h100_sxm+l40s", "--hetero-link", "fast"], "unknown link"),
])
def test_plan_cli_bad_heterogeneous_options_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(app, ["plan", "--model", MODEL, "--requests", "30", "--out", str(tmp_path / "p"),
                                      "--no-disagg", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
