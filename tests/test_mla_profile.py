"""MLA constants through the profile machinery: `calibrate --kernels` fits and stores them when the
kernel folder has the MLA module tables, `Calibrated` times DeepSeek-V3's MLA layers with them.

The check against an independent value: the H100 MLA module tables (vLLM 0.19.0) measure one
DeepSeek-V3 MLA layer of a TP8 rank (16 heads, FP8-block weights, bf16 KV); the calibrated step
model's MLA operators of that shape are the fit's prediction of the row (`mla_fit.predict_seconds`,
to rounding) and within the fit's leave-one-out p90 of the measured latency."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from paretoserve.calibrate import calibrate_kernels
from paretoserve.calibrate.mla_fit import MLA_TABLES, find_mla_tables, fit_mla, predict_seconds, read_mla_terms
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.errors import UserError
from paretoserve.perf.calibrated import Calibrated, load_step_model
from paretoserve.perf.mla import mla_ops
from paretoserve.perf.profile import load_profile, save_profile
from paretoserve.perf.shape import PrefillChunk, StepShape
from prereq import missing

KERNELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kernels" / "h100_sxm"
H100 = load_device("h100_sxm")
DSV3 = load_model("DeepSeek-V3")
LAYERS = 61


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A flat kernel folder: the vLLM 0.19.0 custom all-reduce table and both MLA module tables."""
    tables = find_mla_tables(KERNELS, version="0.19.0")
    allreduce = KERNELS / "comm" / "vllm" / "0.19.0" / "custom_allreduce_perf.parquet"
    if len(tables) < 2 or not allreduce.is_file():
        missing("../shared/data H100 MLA / all-reduce tables not present")
    out = tmp_path_factory.mktemp("kernels")
    for path in (allreduce, *tables.values()):
        shutil.copy(path, out / path.name)
    return out


@pytest.fixture(scope="module")
def fits(folder):
    return {phase: fit_mla(read_mla_terms(folder / f"{stem}.parquet", H100, phase), phase)
            for phase, stem in MLA_TABLES.items()}


def test_calibrate_stores_the_mla_constants_and_loads_them_back(folder, fits, tmp_path):
    profile = calibrate_kernels(folder, "h100_sxm")
    assert profile.mla == {phase: f.constants for phase, f in fits.items()}
    assert profile.fit["mla_generation"]["points"] == fits["generation"].rows
    assert profile.fit["mla_context"]["loo_median"] == pytest.approx(fits["context"].loo_median, abs=1e-5)
    path = save_profile(profile, tmp_path / "h100.yaml")
    assert load_profile(path).mla == profile.mla
    # A folder without MLA tables fits none.
    (tmp_path / "flat").mkdir()
    shutil.copy(folder / "custom_allreduce_perf.parquet", tmp_path / "flat")
    assert calibrate_kernels(tmp_path / "flat", "h100_sxm").mla == {}


def test_bad_mla_section_is_a_one_line_error(folder, tmp_path):
    path = save_profile(calibrate_kernels(folder, "h100_sxm", quality=False), tmp_path / "p.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["mla"]["generation"]["memory"] = 1.5
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="efficiency in \\(0, 1\\]") as err:
        load_profile(path)
    assert err.value.field == "mla.generation.memory"


def _row(folder: Path, phase: str, batch: int, isl: int, step: int) -> int:
    cols = pq.read_table(folder / f"{MLA_TABLES[phase]}.parquet").to_pydict()
    (row,) = [i for i in range(len(cols["batch_size"])) if
              (cols["num_heads"][i], cols["batch_size"][i], cols["isl"][i], cols["step"][i], cols["gemm_type"][i],
               cols["kv_cache_dtype"][i]) == (16, batch, isl, step, "fp8_block", "bfloat16")]
    return row


@pytest.mark.parametrize(("phase", "batch", "isl", "step"),
                         [("context", 1, 4096, 0), ("generation", 64, 1, 4096)])
def test_calibrated_mla_layers_are_the_fitted_table_prediction(folder, fits, phase, batch, isl, step):
    """DeepSeek-V3 (FP8 weights → the FP8 GEMM constant) at TP8, bf16 KV: one 4K prompt, or 64
    decodes at 4K context (64 is a CUDA-graph size: no padding). Per layer, its MLA operators take
    the fit's predicted seconds of that table row."""
    constants = {p: f.constants for p, f in fits.items()}
    model = Calibrated(DSV3, H100, tp=8, kv_dtype="bf16", mla=constants)
    shape = (StepShape(prefill=(PrefillChunk(isl, step),) * batch) if phase == "context"
             else StepShape(decode=(step,) * batch))
    names = {op.name for op in mla_ops(DSV3.layers[0].attention, DSV3.hidden_size, 8, weight_bytes=1.0,
                                       kv_bytes=2.0, act_bytes=2.0)}
    per_layer = sum(op.seconds for op in model.step_time(shape).ops if op.name in names) / LAYERS
    terms = read_mla_terms(folder / f"{MLA_TABLES[phase]}.parquet", H100, phase)
    f = fits[phase]
    predicted = predict_seconds(terms, f.gemm, f.gemm_fp8, f.attention, f.memory, f.fixed_s)
    row = _row(folder, phase, batch, isl, step)
    assert per_layer == pytest.approx(predicted[row], rel=1e-9)
    assert abs(per_layer / terms.measured_s[row] - 1) <= f.loo_p90
    if phase == "generation":  # the decode fast path agrees with the step
        assert model.decode_seconds(batch, batch * step) == pytest.approx(model.step_time(shape).seconds, rel=1e-12)
        assert model.decode_run_seconds(batch, batch * step, 3) == pytest.approx(
            sum(model.decode_seconds(batch, batch * (step + i)) for i in range(3)), rel=1e-9)


def test_load_step_model_passes_the_profile_constants(folder, tmp_path):
    """`--profile` (load_step_model) times MLA with the stored constants: the same step as a
    Calibrated given them, slower than the roofline defaults (fitted efficiencies are lower)."""
    path = save_profile(calibrate_kernels(folder, "h100_sxm", quality=False), tmp_path / "p.yaml")
    stored = load_profile(path)
    shape = StepShape(decode=(4096,) * 64)
    step = load_step_model(DSV3, H100, tp=8, profile=path).step_time(shape).seconds
    direct = Calibrated(DSV3, H100, tp=8, kernels=stored.kernels, mla=stored.mla).step_time(shape).seconds
    without = Calibrated(DSV3, H100, tp=8, kernels=stored.kernels).step_time(shape).seconds
    assert step == pytest.approx(direct, rel=1e-12) and step > without
