"""Measured serving points → deployments (`paretoserve.calibrate.points`), their prediction, and
`validate --points`. Rows are the real H100 rows of shared/data/silicon, picked by id; each expected
deployment is spelled out by hand from the row and engine_facts.md §1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from browser import render_in_chromium
from paretoserve.calibrate.point_replay import COLLECTED, STEADY, PointPrediction, error_summary, predict_point
from paretoserve.calibrate.points import (
    PointDeployment,
    Role,
    map_row,
    map_rows,
    parse_where,
    read_points,
    select,
)
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import expert_weight_bytes, runtime_reserve_bytes, weight_bytes
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from prereq import missing

# ../shared next to the checkout (or next to the folder of worktrees).
POINTS = next((p for p in (Path(__file__).resolve().parents[k] / "shared" / "data" / "silicon" /
                           "h100_sxm_silicon.csv" for k in (2, 3)) if p.exists()), None)
ROWS: dict[str, tuple[int, dict[str, str]]] = {}

DENSE = "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_vllm_agg_1024x128_c16_tp2_epnone_4"
FP8 = "2026_04_06_llama_3_1_70b_h100_sxm_vllm_fp8_agg_1024x8192_c4_tp4_ep1_265"
EP = "2026_03_25_minimax_m2_5_h100_sxm_vllm_fp8_agg_1024x1024_c8_tp4_0_ep4_0_222"
ADP = "2026_04_06_minimax_m2_5_h100_sxm_vllm_fp8_agg_1024x1024_c32_tp4_ep4_1342"
DISAGG = "qwen3_32b_qwen3_32b_h100_sxm_vllm_disagg_4000x1000_c_tp_epnone_2"
SGLANG = "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_sglang_agg_1024x128_c16_tp2_epnone_1"
TRTLLM = ("meta_llama_llama_3_1_8b_instruct_meta_llama_llama_3_1_8b_instruct_h100_sxm_trtllm_agg_"
          "1024x128_c8_tp1_epnone_1")
GPT_OSS_TRT = "openai_gpt_oss_120b_openai_gpt_oss_120b_h100_sxm_trtllm_agg_4000x1000_c192_tp4_epnone_1"
OLD_DSR1 = "2026_03_25_deepseek_r1_h100_sxm_trtllm_fp8_disagg_1024x1024_c6_tp16_0_ep16_0_859"
DSR1_CFG = "dsr1_h100_trtllm_fp8_disagg_1024x1024_c6_cfg494"


def point(row_id: str) -> PointDeployment:
    line, row = ROWS[row_id]
    return map_row(row, line, str(POINTS))


def _find(**values: str) -> str:
    """The id of the first row with these column values (keeps the test on real rows)."""
    return next(i for i, (_, r) in ROWS.items() if all(r[k] == v for k, v in values.items()))


def _old_dump() -> str:
    """A disaggregated row from an older dump (no worker counts): still not represented."""
    return _find(mode="disagg", prefill_num_workers="", backend="sglang")


@pytest.fixture(scope="module", autouse=True)
def _ids_exist():
    if POINTS is None:
        missing("../shared/data/silicon/h100_sxm_silicon.csv not present")
    ROWS.update({row["id"]: (line, row) for line, row in read_points(POINTS)})
    for row_id in (DENSE, FP8, EP, ADP, DISAGG, SGLANG, TRTLLM, GPT_OSS_TRT, OLD_DSR1, DSR1_CFG):
        assert row_id in ROWS, row_id


def test_dense_tp_row():
    line, row = ROWS[DENSE]
    layout = (row["tp_size"], row["batch_size"], row["isl"], row["osl"], row["precision"])
    assert layout == ("2", "16", "1024", "128", "")
    got = point(DENSE)
    assert got == PointDeployment(
        id=DENSE, line=line, model_path="Qwen/Qwen3-32B", model="Qwen3-32B", backend="vllm",
        backend_version=row["backend_version"], mode="agg", hardware="h100_sxm", policy="vllm",
        weight_dtype="bf16", kv_dtype="bf16", compute_dtype="bf16",
        roles=(Role("agg", workers=1, tp=2, pp=1, attention_dp=1, moe_tp=int(row["moe_tp_size"] or 0),
                    moe_ep=int(row["moe_ep_size"] or 0), batch_size=16, max_num_seqs=512,
                    max_num_batched_tokens=512 + 1024 + 1500),),
        concurrency=16, isl=1024, osl=128, measured_ttft_s=float(row["silicon_ttft_ms"]) / 1e3,
        measured_tpot_s=float(row["silicon_tpot_ms"]) / 1e3, unsupported=None)


def test_fp8_row_uses_fp8_weights_and_math_on_the_bf16_checkpoint():
    got = point(FP8)
    assert load_model("Meta-Llama-3.1-70B").weight_dtype == "bf16"
    dtypes = (got.weight_dtype, got.compute_dtype, got.kv_dtype)
    assert got.model == "Meta-Llama-3.1-70B" and dtypes == ("fp8", "fp8", "bf16")
    assert got.roles[0].tp == 4 and got.concurrency == 4 and got.unsupported is None


def test_moe_with_expert_parallelism_maps_to_its_layout():
    """vLLM row tp4, moe_tp 1, moe_ep 4, batch 8: one instance on 4 GPUs, attention TP 4, whole
    experts split 4 ways (MiniMax-M2.5's 256 experts -> 64 per GPU), c8."""
    got = point(EP)
    assert got.roles == (Role("agg", 1, 4, 1, 1, 1, 4, 8, 512, 512 + 1024 + 1500),)
    assert got.roles[0].layout() == ParallelLayout(tp=4, pp=1, attention_dp=1, moe_tp=1, ep=4)
    assert got.model == "MiniMax-M2.5" and got.weight_dtype == "fp8" and got.unsupported is None
    assert predict_point(got).ttft_s is not None


def test_attention_dp_row():
    """vLLM with EP: attention TP 4 × attention-DP 4 = 16 GPUs, MoE EP 16 (moe_tp 1); batch 8 per DP
    rank -> c32, simulated as 4 engines of 4 GPUs with 8 users each on average."""
    got = point(ADP)
    assert got.roles == (Role("agg", 1, 4, 1, 4, 1, 16, 8, 512, 512 + 1024 + 1500),)
    assert got.roles[0].layout() == ParallelLayout(tp=4, pp=1, attention_dp=4, moe_tp=1, ep=16)
    assert got.concurrency == 32 and got.unsupported is None
    assert predict_point(got).tpot_s is not None


def test_inconsistent_moe_columns_are_stated():
    line, row = ROWS[ADP]
    bad = map_row({**row, "moe_tp_size": "2"}, line, str(POINTS))
    assert bad.unsupported == "field 'moe_tp': MoE TP 2 × EP 16 must equal attention TP 4 × DP 4 = 16 GPUs"


def test_disaggregated_xpyd_row():
    got = point(DISAGG)
    # 8 prefill workers of TP1 (1 sequence, ISL + 1500 tokens), 2 decode workers of TP4 at batch 224.
    assert got.roles == (Role("prefill", 8, 1, 1, 1, 0, 0, 1, 1, 4000 + 1500),
                         Role("decode", 2, 4, 1, 1, 0, 0, 224, 512, 512))
    assert (got.mode, got.concurrency, got.weight_dtype, got.unsupported) == ("disagg", 448, "fp8", None)


def test_sglang_row_runs_sglang_as_the_generator_launched_it():
    """SGLang 0.5.1.post1, TP2, batch 16, ISL 1024 on an H100 SXM (81,075 MiB): max_running_requests
    128 (the generator's default batch), chunked_prefill_size 8192 (< 160 GiB GPU), max_prefill_tokens
    1024 + 1500, mixed chunks (aggregated), ignore_eos with the radix cache off, page size 1;
    mem_fraction_static (81075 − (9.5 + 2 / 2) × 1024) / 81075 = 0.867 (that release's rule) holds
    weights + KV, so the simulator's utilization adds its own activation reserve to it."""
    got = point(SGLANG)
    model, device = load_model("Qwen3-32B"), load_device("h100_sxm")
    reserve = runtime_reserve_bytes(model, 2, 8192 + 128, 128) / device.mem_capacity
    assert (got.policy, got.model, got.weight_dtype, got.concurrency, got.unsupported) == \
        ("sglang", "Qwen3-32B", "bf16", 16, None)
    (role,) = got.roles
    assert role == Role("agg", 1, 2, 1, 1, 1, 1, 16, max_num_seqs=128, max_num_batched_tokens=8192 + 128,
                        block_size=1, gpu_memory_utilization=pytest.approx(0.867 + reserve),
                        policy_options=(("chunked_prefill_size", 8192.0), ("max_prefill_tokens", 2524.0),
                                        ("mixed_chunk", 1.0), ("ignore_eos", 1.0)))


def test_trtllm_row_runs_trtllm_as_the_generator_launched_it():
    """TRT-LLM 1.0.0rc3, Llama-3.1-8B-Instruct (bf16) TP1, batch 8, ISL 1024: max_batch_size 128,
    max_num_tokens 128 + 1024 + 1500 = 2652 rounded up to 32 = 2656, tokens_per_block 32, no
    chunked context, KV = 0.80 × (memory − weights − runtime): utilization 0.8 + 0.2 × (weights +
    runtime) / memory."""
    got = point(TRTLLM)
    model, device = load_model("Meta-Llama-3.1-8B"), load_device("h100_sxm")
    held = (weight_bytes(model, "bf16") + runtime_reserve_bytes(model, 1, 2656, 128)) / device.mem_capacity
    assert (got.policy, got.model, got.concurrency, got.unsupported) == ("trtllm", "Meta-Llama-3.1-8B", 8, None)
    assert got.roles == (Role("agg", 1, 1, 1, 1, 1, 1, 8, max_num_seqs=128, max_num_batched_tokens=2656,
                              block_size=32, gpu_memory_utilization=pytest.approx(0.8 + 0.2 * held),
                              policy_options=(("chunked_prefill", 0.0),)),)
    prediction = predict_point(got, protocol=STEADY)
    assert prediction.ttft_s is not None and prediction.tpot_s is not None


def test_trtllm_row_with_concurrency_batch_times_tp_ran_attention_dp():
    """gpt-oss-120b TRT-LLM, tp 4, attention-DP blank, moe_tp 4 × moe_ep 1, batch 48, id c192:
    192 = 48 × 4 and the MoE columns account for 4 GPUs, so attention TP 1 × attention-DP 4 with 48
    users per rank (engine_facts §1: TRT-LLM with ADP runs attention TP 1, ADP = GPUs). The KV share
    counts the weights one GPU holds: all non-expert weights + a quarter of the experts (fp8)."""
    got = point(GPT_OSS_TRT)
    model, device = load_model("gpt-oss-120b"), load_device("h100_sxm")
    experts = expert_weight_bytes(model, "fp8")
    per_gpu = weight_bytes(model, "fp8") - experts + experts / 4
    tokens = -(-(128 + 4000 + 1500) // 32) * 32
    held = (per_gpu + runtime_reserve_bytes(model, 1, tokens, 128)) / device.mem_capacity
    (role,) = got.roles
    assert (role.tp, role.attention_dp, role.moe_tp, role.moe_ep, role.batch_size) == (1, 4, 4, 1, 48)
    assert role.layout() == ParallelLayout(tp=1, attention_dp=4, moe_tp=4, ep=1)
    assert role.max_num_batched_tokens == tokens and role.gpu_memory_utilization == pytest.approx(0.8 + 0.2 * held)
    assert (got.concurrency, got.unsupported) == (192, None)


def test_older_dump_row_takes_the_worker_counts_of_the_same_measurement():
    """The 2026-03-25 DeepSeek-R1 TRT-LLM 1024×1024 c6 row (no worker counts) has the same mean TTFT
    and TPOT, engine, lengths and 16 + 16 GPUs per role as the cfg494 db-dump row, which records 1
    prefill worker (attention TP 1 × DP 16, EP 16) and 3 decode workers (TP 16, EP 16) at batch 2:
    3 × 2 = 6 users, the id's c6. Alone (no twin) the row stays unrepresented."""
    (line, old), (twin_line, twin) = ROWS[OLD_DSR1], ROWS[DSR1_CFG]
    assert old["silicon_ttft_ms"][:12] == twin["silicon_ttft_ms"][:12] and old["prefill_num_workers"] == ""
    got = {p.id: p for p in map_rows([(line, old), (twin_line, twin)], str(POINTS))}[OLD_DSR1]
    prefill, decode = got.roles
    assert (prefill.workers, prefill.tp, prefill.attention_dp, prefill.moe_ep, prefill.batch_size) == (1, 1, 16, 16, 1)
    assert (decode.workers, decode.tp, decode.attention_dp, decode.moe_ep, decode.batch_size) == (3, 16, 1, 16, 2)
    assert (got.concurrency, got.unsupported, got.model) == (6, None, "DeepSeek-R1")
    assert "no row records the same measurement" in map_rows([(line, old)])[0].unsupported


def test_unsupported_engines_precisions_and_old_dumps():
    fp4 = point(_find(backend="vllm", model_path="openai/gpt-oss-120b"))
    # MXFP4 weights on a GPU without fp4 math run weight-only (dequantized to bf16), as the step
    # model now computes them there.
    assert fp4.weight_dtype == "fp4" and fp4.compute_dtype == "bf16"
    assert "fp4" not in load_device(fp4.hardware).flops and fp4.unsupported is None
    old = point(_find(mode="disagg", prefill_num_workers="", backend="sglang"))
    assert "without prefill/decode worker counts" in old.unsupported and old.roles == ()


def test_where_filter_and_bad_rows(tmp_path):
    rows = list(ROWS.values())
    assert parse_where("backend=vllm, model=Qwen/Qwen3-32B") == {"backend": "vllm", "model_path": "Qwen/Qwen3-32B"}
    picked = select(rows, parse_where("backend=vllm,model=Qwen/Qwen3-32B,mode=agg"))
    assert len(picked) == 93
    with pytest.raises(UserError, match="no column colour"):
        select(rows, {"colour": "red"})
    with pytest.raises(UserError, match="expected COLUMN=VALUE"):
        parse_where("backend")
    line, row = ROWS[DENSE]
    with pytest.raises(UserError, match=rf"x.csv:{line} field 'isl'"):
        map_row({**row, "isl": "many"}, line, "x.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,backend\n1,vllm\n")
    with pytest.raises(UserError, match="missing column"):
        read_points(bad)


def test_single_user_prediction_is_one_prefill_then_decode_steps():
    # At concurrency 1 the closed loop is one request at a time: TTFT is one prefill step of ISL
    # tokens, TPOT the mean of the OSL - 1 decode steps (context ISL + 1 ... ISL + OSL - 1).
    got = point(FP8)
    single = PointDeployment(**{**got.__dict__, "concurrency": 1,
                                "roles": (Role(**{**got.roles[0].__dict__, "batch_size": 1}),)})
    roof = Roofline(load_model("Meta-Llama-3.1-70B"), load_device("h100_sxm"), tp=4, weight_dtype="fp8")
    ttft = roof.seconds(StepShape(prefill=(PrefillChunk(got.isl),)))
    tpot = roof.decode_run_seconds(1, got.isl + 1, got.osl - 1) / (got.osl - 1)
    predicted = predict_point(single)
    assert predicted.ttft_s == pytest.approx(ttft, rel=1e-9)
    assert predicted.tpot_s == pytest.approx(tpot, rel=1e-9)


def test_error_summary_by_hand():
    a, b = point(DENSE), point(FP8)
    preds = [PointPrediction(a, a.measured_ttft_s * 1.2, a.measured_tpot_s * 0.9),
             PointPrediction(b, b.measured_ttft_s * 0.5, b.measured_tpot_s * 1.1),
             PointPrediction(point(_old_dump()), None, None)]
    summary = error_summary(preds)
    overall = summary["overall"]
    assert (overall["rows"], overall["predicted"]) == (3, 2)
    assert overall["ttft"]["median_abs"] == pytest.approx(0.35)
    assert overall["ttft"]["mean_signed"] == pytest.approx(-0.15)
    assert overall["tpot"]["median_abs"] == pytest.approx(0.1)
    assert summary["unsupported"] == {point(_old_dump()).unsupported: 1}
    assert "without prefill/decode worker counts" in str(point(_old_dump()).unsupported)
    assert [g["rows"] for g in summary["groups"]] == [1, 1, 1]


def test_validate_points_cli_writes_predictions_and_summary(tmp_path):
    source = tmp_path / "in" / "points.csv"
    source.parent.mkdir()
    old = _old_dump()
    with open(POINTS, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        chosen = [r for r in reader if r["id"] in (DENSE, FP8, old, DISAGG)]
    with open(source, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["validate", "--points", str(source), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["overall"]["rows"] == 4 and summary["overall"]["predicted"] == 3 and summary["estimated"]
    with open(out / "predictions.csv", newline="") as handle:
        lines = {r["id"]: r for r in csv.DictReader(handle)}
    assert set(lines) == {DENSE, FP8, old, DISAGG}
    assert lines[old]["predicted_ttft_ms"] == "" and "older dump" in lines[old]["unsupported_reason"]
    assert float(lines[DENSE]["predicted_ttft_ms"]) > 0 and lines[DENSE]["unsupported_reason"] == ""
    assert "Predicted vs measured" in (out / "report.html").read_text()
    dom, errors = render_in_chromium(out / "report.html", tmp_path / "chromium-profile")
    assert errors == [] and 'class="main-svg"' in dom[dom.index('id="points"'):]  # the figure was drawn
    refused = CliRunner().invoke(app, ["validate", "--points", str(source), "--out", str(source.parent)])
    assert refused.exit_code == 2 and "holds the input" in refused.output
    assert source.exists()
    both = CliRunner().invoke(app, ["validate", "--points", str(source), "--measured", str(tmp_path)])
    assert both.exit_code == 2 and "give one of" in both.output


def test_validate_points_collected_by_default_and_steady_state_on_request(tmp_path):
    """The default replay is the collected protocol (2C warm-up drained, 20C measured from a
    simultaneous start, all in the mean), `--steady-state` the plain steady-state loop; the JSON
    names the protocol and its error is the row's `predict_point` under it. On the c16 DENSE row
    the two differ: the collected mean carries the first wave's prefill queue."""
    source = tmp_path / "points.csv"
    with open(POINTS, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        chosen = [r for r in reader if r["id"] == DENSE]
    with open(source, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    for flags, protocol in (([], COLLECTED), (["--steady-state"], STEADY)):
        result = CliRunner().invoke(app, ["validate", "--points", str(source), "--json", *flags])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["protocol"] == protocol.name
        expected = predict_point(point(DENSE), protocol=protocol).error("ttft")
        assert summary["overall"]["ttft"]["mean_signed"] == pytest.approx(expected)
    assert predict_point(point(DENSE)).ttft_s != pytest.approx(predict_point(point(DENSE), protocol=STEADY).ttft_s)
    refused = CliRunner().invoke(app, ["validate", "--measured", str(tmp_path), "--steady-state"])
    assert refused.exit_code == 2 and "--steady-state applies to --points" in refused.output
