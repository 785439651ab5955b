"""Fidelity scoreboard (issue 10): the latency model against every real measurement in the repo.

Each row: an error of the predictions (value: with calibrated profiles fitted on the measured H100
(vLLM 0.19.0) and A100 (vLLM 0.14.0) kernel tables; baseline: the datasheet roofline), and in the note
what was covered. Errors are relative, (predicted − measured) / measured, in %.

1. H100 serving points (shared/data/silicon, 917 rows): `validate --points` per group (model ×
   engine × mode) and overall — coverage, median and p90 |error| of mean TTFT and mean TPOT. Rows the
   model cannot represent yet are counted out with their reason (see `validate --points`). Each row
   is replayed as collected (`paretoserve.calibrate.point_replay.COLLECTED`: 2C warm-up requests
   drained, then all 20C measured requests, uncapped, in the mean; about 3× the simulation time of
   the old 5C steady-state loop, a few seconds of this benchmark's minute).
2. The real vLLM 0.19 run (RTX 4090, Llama-3.1-8B, 300 ShareGPT requests) replayed as
   `validate --measured` does: signed error of mean and p90 TTFT, TPOT, E2E (datasheet only: there
   are no RTX 4090 kernel tables).
3. Splitwise static batches (shared/data/static_batch, Llama-2-70B on 8×A100 / 8×H100 at TP 2/4/8):
   measured prompt time (one prefill step of batch × prompt tokens) and token time (mean decode
   step over the output) against the step-time model; median and p90 |error|. BLOOM-176B rows
   (ALiBi, no config bundled) and power-capped H100 rows are counted out.
4. Kernel tables, leave-one-out (H100, vLLM 0.19.0): median and p90 APE per kernel kind, as
   `calibrate --kernels` stores them in the profile (the computation bench_calibration reports);
   and the MLA module tables (DeepSeek-V3 shapes) against the MLA constants fitted on them
   (`paretoserve.calibrate.mla_fit`; `calibrate --kernels` stores them in the profile, which the
   calibrated point predictions use), baseline the datasheet MLA model.
5. Fused MoE (grouped GEMM, `perf/grouped_gemm.py`), leave-one-shape-out on the H100 vLLM 0.19.0
   moe_perf balanced rows per dtype (baseline: the previous roofline formula, 3 µs + max(FLOPs /
   70% peak, bytes / 80% bandwidth)); EP all-to-all (`perf/alltoall.py`), leave-one-out on the
   SGLang 0.5.12 H100 DeepEP tables per kernel family and phase (baseline: the link default,
   10 µs + bytes / 80% of 450 GB/s NVLink).
6. The datasheet all-reduce model (`perf.comm`) against the all-reduce tables it is fitted on
   (H100 vLLM 0.24.0 custom all-reduce, NCCL 2.29.2): value = leave-one-out (constants refitted
   without the row), baseline = the shipped constants (in-sample); and on the A100 tables (vLLM
   0.14.0, NCCL 2.27.3), which the fit never saw (shipped constants only).
7. ParetoPipe's MobileNetV2 split over two Raspberry Pis (shared/data/edge): the partition model with
   the Pi's compute efficiency fitted on split block 8 (value) or at the datasheet default, 70% of
   peak (baseline); |error| of images/s on the held-out pipelined splits and the sequential row.

Standalone: `python benchmarks/bench_fidelity.py` (about a minute).
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from paretoserve.bench.importers import import_vllm
from paretoserve.calibrate import calibrate_kernels, comm_fit
from paretoserve.calibrate.a2a_fit import leave_one_out as a2a_leave_one_out
from paretoserve.calibrate.a2a_fit import read_phase_rows
from paretoserve.calibrate.moe_fit import features as moe_features
from paretoserve.calibrate.moe_fit import leave_one_shape_out, read_moe_table
from paretoserve.calibrate.moe_fit import predict as moe_predict
from paretoserve.calibrate.mla_fit import fit_mla_tables
from paretoserve.calibrate.point_replay import error_summary, predict_points
from paretoserve.calibrate.points import map_rows, read_points
from paretoserve.calibrate.run_fit import compare_table, run_setup, simulate_setup, step_model_for
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.alltoall import A2aPhase
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.calibrated import Calibrated, Coefficients
from paretoserve.perf.grouped_gemm import SHIPPED
from paretoserve.perf.profile import load_profile, save_profile
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.runs import read_run

_ROOT = Path(__file__).resolve().parents[1]
DATA = next((p / "shared" / "data" for p in (_ROOT.parent, _ROOT.parent.parent) if (p / "shared" / "data").is_dir()),
            _ROOT.parent / "shared" / "data")
POINTS = DATA / "silicon" / "h100_sxm_silicon.csv"
REAL_RUN = DATA / "serving_runs" / "rtx4090_llama3.1-8b_vllm0.19"
SPLITWISE = DATA / "static_batch" / "splitwise_perf_model.csv"
KERNEL_VERSIONS = {"h100_sxm": "0.19.0", "a100_sxm": "0.14.0"}
# meta-llama/Llama-2-70b-hf's published architecture (config.json fields), for the Splitwise rows.
LLAMA2_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
              "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8,
              "num_hidden_layers": 80, "vocab_size": 32000, "max_position_embeddings": 4096,
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "torch_dtype": "float16"}
SPLITWISE_DEVICES = {"a100-80gb": "a100_sxm", "h100-80gb": "h100_sxm"}


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def _pair(name: str, calibrated: float | None, datasheet: float | None, note: str = "") -> dict:
    return {"name": name, "value": _pct(calibrated), "unit": "% error", "baseline": _pct(datasheet),
            "ratio": _ratio(calibrated, datasheet), "note": note}


def profiles(folder: Path) -> tuple[dict[str, Path], dict]:
    """Calibrated profiles fitted on the kernel tables (path per device), and the H100 fit quality."""
    paths, fit = {}, {}
    for device, version in KERNEL_VERSIONS.items():
        profile = calibrate_kernels(DATA / "kernels" / device, device, version=version, quality=device == "h100_sxm")
        paths[device] = save_profile(profile, folder / f"{device}.yaml")
        if device == "h100_sxm":
            fit = profile.fit
    return paths, fit


def point_rows(profile: Path) -> list[dict]:
    rows = map_rows(read_points(POINTS), str(POINTS))
    datasheet = error_summary(predict_points(rows))
    calibrated = error_summary(predict_points(rows, profile=str(profile)))
    out = []
    entries = [*zip(datasheet["groups"], calibrated["groups"], strict=True),
               ({"model": "all rows", "engine": "", "mode": "", **datasheet["overall"]},
                {"model": "all rows", **calibrated["overall"]})]
    for d, c in entries:
        label = f"{d['model']} {d['engine']} {d['mode']}".strip()
        cover = f"{d['predicted']}/{d['rows']} rows predicted ({d['coverage']:.0%})"
        if not d["predicted"]:
            out.append({"name": f"points {label}", "value": None, "unit": "", "note": cover + ": not represented"})
            continue
        for metric in ("ttft", "tpot"):
            signed = (f"mean signed error {c[metric]['mean_signed']:+.0%} calibrated, "
                      f"{d[metric]['mean_signed']:+.0%} datasheet")
            for stat, word in (("median_abs", "median"), ("p90_abs", "p90")):
                note = signed if stat == "median_abs" else (cover if metric == "ttft" else "")
                out.append(_pair(f"points {label} {metric.upper()} {word} |err|", c[metric][stat], d[metric][stat],
                                 note))
    top = list(datasheet["unsupported"].items())[:4]  # sorted by rows, most first
    out.append({"name": "points not represented (top reasons)", "value": None, "unit": "",
                "note": "; ".join(f"{n} rows: {r}" for r, n in top)})
    return out


def vllm_run_rows(folder: Path) -> list[dict]:
    run_dir = folder / "vllm_run"
    import_vllm(REAL_RUN, run_dir)
    setup = run_setup(read_run(run_dir))
    pairs = compare_table(simulate_setup(setup, step_model_for(setup, None, Coefficients())),
                          setup.measured.values())
    out = []
    for metric in ("ttft", "tpot", "e2e"):
        for stat in ("mean", "p90"):
            predicted, measured = pairs[metric][stat]
            out.append({"name": f"vLLM run {metric.upper()} {stat}", "value": None, "unit": "% error",
                        "baseline": (predicted / measured - 1) * 100,
                        "note": f"datasheet {predicted * 1e3:,.1f} ms vs measured {measured * 1e3:,.1f} ms "
                                f"(RTX 4090: no kernel tables, no calibrated value)"})
    return out


def _static_models(folder: Path, paths: dict[str, Path]) -> dict[tuple[str, int, bool], StepTimeModel]:
    config = folder / "Llama-2-70b.json"
    config.write_text(json.dumps(LLAMA2_70B))
    model = load_model(str(config))
    out: dict[tuple[str, int, bool], StepTimeModel] = {}
    for device_name in SPLITWISE_DEVICES.values():
        device = load_device(device_name)
        prof = load_profile(paths[device_name], device=device_name)
        for tp in (2, 4, 8):
            out[(device_name, tp, False)] = Roofline(model, device, tp=tp)
            out[(device_name, tp, True)] = Calibrated(model, device, tp=tp, kernels=prof.kernels,
                                                      coefficients=prof.coefficients)
    return out


def splitwise_rows(folder: Path, paths: dict[str, Path]) -> list[dict]:
    models = _static_models(folder, paths)
    errors: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    with open(SPLITWISE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        device = SPLITWISE_DEVICES.get(row["hardware"])
        if row["model"] != "llama2-70b":
            skipped[f"{row['model']}: no config bundled (ALiBi attention)"] += 1
            continue
        if device is None:
            skipped[f"{row['hardware']}: power-capped H100 not in the catalog"] += 1
            continue
        b, p, t, tp = (int(row[k]) for k in ("batch_size", "prompt_size", "token_size", "tensor_parallel"))
        for calibrated in (False, True):
            model = models[(device, tp, calibrated)]
            prompt = model.seconds(StepShape(prefill=(PrefillChunk(p),) * b))
            token = model.decode_run_seconds(b, b * (p + 1), t - 1) / (t - 1)
            errors[(device, "prompt", calibrated)].append(prompt / (float(row["prompt_time"]) / 1e3) - 1)
            errors[(device, "token", calibrated)].append(token / (float(row["token_time"]) / 1e3) - 1)
    out = []
    for device in SPLITWISE_DEVICES.values():
        for what in ("prompt", "token"):
            signed = {c: np.asarray(errors[(device, what, c)]) for c in (True, False)}
            cal, sheet = np.abs(signed[True]), np.abs(signed[False])
            note = (f"mean signed error {signed[True].mean():+.0%} calibrated, {signed[False].mean():+.0%} datasheet"
                    + (f"; {len(cal)} Llama-2-70B rows, TP 2/4/8, batch 1–64, prompt/output 128–8192"
                       if what == "prompt" else ""))
            out.append(_pair(f"Splitwise {device} {what} time median |err|", float(np.median(cal)),
                             float(np.median(sheet)), note))
            out.append(_pair(f"Splitwise {device} {what} time p90 |err|", float(np.percentile(cal, 90)),
                             float(np.percentile(sheet, 90))))
    out.append({"name": "Splitwise rows not represented", "value": float(sum(skipped.values())), "unit": "rows",
                "note": "; ".join(f"{n} rows: {r}" for r, n in skipped.items())})
    return out


def loo_rows(fit: dict) -> list[dict]:
    """The profile's fit quality per kernel kind (its MLA entries are `mla_rows`, with the constants)."""
    out = []
    for kind, stats in fit.items():
        if kind.startswith("mla_"):
            continue
        for stat in ("median", "p90"):
            out.append(_pair(f"kernel LOO H100 {kind} {stat} APE", stats[f"loo_{stat}"], stats[f"datasheet_{stat}"],
                             f"{stats['points']:,} points" if stat == "median" else ""))
    return out


def moe_loo_rows() -> list[dict]:
    """Section 5 of the module docstring."""
    device = load_device("h100_sxm")
    root = DATA / "kernels" / "h100_sxm"
    table = read_moe_table(root / "moe" / "vllm" / "0.19.0" / "moe_perf.parquet")
    out = []
    for dtype in SHIPPED:
        loo = leave_one_shape_out(table, dtype, device)
        f = moe_features(table, dtype, device)
        old = np.abs(moe_predict(np.array([3e-6, 0.7, 0.8, np.inf, 0.0]), f) / f["latency"] - 1.0)
        for stat, q in (("median", 50), ("p90", 90)):
            out.append(_pair(f"MoE grouped-GEMM LOO H100 {dtype} {stat} APE", float(np.percentile(loo, q)),
                             float(np.percentile(old, q)),
                             f"{len(loo):,} balanced rows, shapes held out" if stat == "median" else ""))
    link = A2aPhase(10e-6, 450e9 * 0.8)
    for family in ("ll", "normal"):
        path = root / "comm" / "sglang" / "0.5.12" / f"wideep_deepep_{family}_perf.parquet"
        for phase in ("dispatch", "combine"):
            loo = a2a_leave_one_out(path, family, phase)
            remote, seconds, _ = read_phase_rows(path, family, phase)
            old = np.abs((link.latency_s + remote / link.bandwidth) / seconds - 1.0)
            for stat, q in (("median", 50), ("p90", 90)):
                out.append(_pair(f"EP all-to-all LOO H100 DeepEP {family} {phase} {stat} APE",
                                 float(np.percentile(loo, q)), float(np.percentile(old, q)),
                                 f"{len(loo):,} shapes" if stat == "median" else ""))
    return out


def mla_rows() -> list[dict]:
    """Section 4 of the module docstring: the MLA module tables."""
    out = []
    folder = DATA / "kernels" / "h100_sxm" / "mla" / "vllm" / KERNEL_VERSIONS["h100_sxm"]
    for phase, fit in fit_mla_tables(folder, load_device("h100_sxm")).items():
        note = (f"{fit.rows:,} points; e_gemm {fit.gemm:.2f} (bf16) / {fit.gemm_fp8:.2f} (fp8 block), "
                f"e_attention {fit.attention:.2f}, e_memory {fit.memory:.2f}, {fit.fixed_s * 1e6:.1f} µs per op")
        out.append(_pair(f"kernel LOO H100 mla_{phase} median APE", fit.loo_median, fit.datasheet_median, note))
        out.append(_pair(f"kernel LOO H100 mla_{phase} p90 APE", fit.loo_p90, fit.datasheet_p90))
    return out


A100_COMM_TABLES = ("a100_sxm/comm/vllm/0.14.0/custom_allreduce_perf.parquet",
                    "a100_sxm/comm/nccl/2.27.3/nccl_perf.parquet")


def comm_rows() -> list[dict]:
    """Median / p90 |error| of `perf.comm` per all-reduce table (item 6 of the module docstring)."""
    out = []
    h100 = load_device("h100_sxm")
    tables = comm_fit.load_fit_tables(DATA / "kernels")
    loo = comm_fit.leave_one_out(tables, h100)
    shipped = comm_fit.model_errors(tables, h100)
    start = 0
    for path, table in zip(comm_fit.FIT_TABLES, tables, strict=True):
        sel = slice(start, start + len(table))
        start += len(table)
        label = "vLLM custom AR" if table.framework == "vllm" else "NCCL"
        for stat, f in (("median", np.median), ("p90", lambda x: np.percentile(x, 90))):
            note = f"{len(table)} rows of {path}" if stat == "median" else ""
            out.append(_pair(f"comm model H100 {label} {stat} APE", float(f(np.abs(loo[sel]))),
                             float(f(np.abs(shipped[sel]))), note))
    a100 = load_device("a100_sxm")
    for path, table in zip(A100_COMM_TABLES, comm_fit.load_fit_tables(DATA / "kernels", A100_COMM_TABLES),
                           strict=True):
        errors = comm_fit.model_errors([table], a100)
        label = "vLLM custom AR" if table.framework == "vllm" else "NCCL"
        for stat, f in (("median", np.median), ("p90", lambda x: np.percentile(x, 90))):
            note = (f"held-out device: {len(table)} rows of {path}, mean signed {errors.mean():+.0%}"
                    if stat == "median" else "")
            out.append(_pair(f"comm model A100 {label} {stat} APE", None, float(f(np.abs(errors))), note))
    return out


def edge_rows() -> list[dict]:
    """Section 7 of the module docstring."""
    from paretoserve.calibrate.edge_fit import check_paretopipe
    from paretoserve.perf.roofline import Efficiency

    path = DATA / "edge" / "paretopipe_mobilenetv2_rpi.csv"
    if not path.exists():
        return []
    fitted = check_paretopipe(path, fit_block=8)
    datasheet = check_paretopipe(path, fit_block=8, efficiency=Efficiency().gemm)

    def errors(check, mode):
        return [abs(r.error) for r in check.held_out() if r.mode == mode]

    name = "edge ParetoPipe MobileNetV2 2xPi"
    fit_p, ds_p = errors(fitted, "pipelined"), errors(datasheet, "pipelined")
    return [
        _pair(f"{name} pipelined median |err|", float(np.median(fit_p)), float(np.median(ds_p)),
              f"{len(fit_p)} held-out splits; efficiency fitted on block 8: {fitted.efficiency:.1%} of peak"),
        _pair(f"{name} pipelined max |err|", max(fit_p), max(ds_p),
              f"rank correlation (Spearman) {fitted.spearman:+.2f}: split order not reproduced"),
        _pair(f"{name} sequential |err|", errors(fitted, "sequential")[0], errors(datasheet, "sequential")[0],
              "block 8; the measured 6.2x pipelined speed-up is beyond a 2-stage chain (at most 2x)"),
    ]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        folder = Path(tmp)
        paths, fit = profiles(folder)
        return (point_rows(paths["h100_sxm"]) + vllm_run_rows(folder) + splitwise_rows(folder, paths)
                + edge_rows() + loo_rows(fit) + mla_rows() + moe_loo_rows() + comm_rows())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from run_all import main

    main(["fidelity"])
