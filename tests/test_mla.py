"""MLA as vLLM runs it (engine_facts §3): decompressed MHA for prefill, absorbed MQA over the latent
for decode; constants fitted to the shipped H100 MLA module tables (vLLM 0.19, DeepSeek-V3)."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from paretoserve.calibrate.mla_fit import fit_mla, predict_seconds, read_mla_terms
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from prereq import missing

MLA_TABLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "kernels" / "h100_sxm" / "mla" / "vllm"

LAYERS = 61  # DeepSeek-V3 decoder layers, all MLA


def _op(step, name):
    return next(op for op in step.ops if op.name == name)


def test_prefill_flops_per_pair_are_decompressed_mha():
    """DeepSeek-V3 (128 heads, qk_nope 128, rope 64, v 128) at TP8: per (query, key) pair and rank
    2 × 16 × (128 + 64) for QKᵀ + 2 × 16 × 128 for PV = 10,240 FLOPs; absorbed decode pairs cost
    2 × 16 × (2 × 512 + 64) = 34,816 (3.4× more)."""
    roof = Roofline(load_model("DeepSeek-V3"), load_device("h100_sxm"), tp=8)
    c = 1000
    pairs = c * (c + 1) / 2  # causal pairs of one 1000-token prompt
    prefill = _op(roof.step_time(StepShape(prefill=(PrefillChunk(c),))), "attn.prefill")
    assert prefill.flops / (LAYERS * pairs) == pytest.approx(2 * 16 * 192 + 2 * 16 * 128)
    decode = _op(roof.step_time(StepShape(decode=(4000,))), "attn.decode")
    assert decode.flops / (LAYERS * 4000) == pytest.approx(2 * 16 * (2 * 512 + 64))


@pytest.mark.parametrize(("kv_dtype", "value_bytes"), [("bf16", 2), ("fp8", 1)])
def test_decode_reads_the_latent_once_per_token(kv_dtype, value_bytes):
    """Decode bytes per KV token = (kv_lora_rank 512 + rope 64) × dtype bytes, on every TP rank
    (the latent cache is replicated): 1,152 B in bf16, 576 B in fp8."""
    roof = Roofline(load_model("DeepSeek-V3"), load_device("h100_sxm"), tp=8, kv_dtype=kv_dtype)
    short = _op(roof.step_time(StepShape(decode=(1000,))), "attn.decode").bytes
    long = _op(roof.step_time(StepShape(decode=(3000,))), "attn.decode").bytes
    assert (long - short) / (LAYERS * 2000) == pytest.approx(576 * value_bytes)


def test_decode_only_step_reads_no_prefill_up_projection_weights():
    """The kv_b up-projection of the prefill path does not run in a decode-only step."""
    roof = Roofline(load_model("DeepSeek-V3"), load_device("h100_sxm"), tp=8)
    names = {op.name for op in roof.step_time(StepShape(decode=(1000,) * 4)).ops}
    assert "attn.mla_absorb" in names and "attn.mla_kv_up" not in names


@pytest.mark.parametrize(("phase", "batch", "isl", "step"),
                         [("context", 1, 4096, 0), ("generation", 64, 1, 4096)])
def test_fitted_constants_predict_a_serving_row_within_the_fitted_error(phase, batch, isl, step):
    """H100 MLA module tables (vLLM 0.19.0): the fit beats the datasheet constants, and the measured
    row of a DeepSeek-V3 TP8 serving shape (16 heads per rank, FP8-block weights, bf16 KV: one 4K
    prompt; 64 decodes at 4K context) is predicted within the fit's leave-one-out p90."""
    stem = {"context": "mla_context_module_perf", "generation": "mla_generation_module_perf"}[phase]
    path = MLA_TABLES / "0.19.0" / f"{stem}.parquet"
    if not path.is_file():
        missing("../shared/data MLA tables not present")
    terms = read_mla_terms(path, load_device("h100_sxm"), phase)
    fit = fit_mla(terms, phase)
    assert fit.loo_median < fit.datasheet_median / 3
    assert 0 < fit.gemm_fp8 < fit.gemm <= 1 and 0 < fit.attention <= 1 and 0 < fit.memory <= 1
    pred = predict_seconds(terms, fit.gemm, fit.gemm_fp8, fit.attention, fit.memory, fit.fixed_s)
    cols = pq.read_table(path).to_pydict()
    (row,) = [i for i in range(len(pred)) if (cols["num_heads"][i], cols["batch_size"][i], cols["isl"][i],
              cols["step"][i], cols["gemm_type"][i], cols["kv_cache_dtype"][i])
              == (16, batch, isl, step, "fp8_block", "bfloat16")]
    assert abs(pred[row] / terms.measured_s[row] - 1) <= fit.loo_p90
    assert np.median(np.abs(pred / terms.measured_s - 1)) == pytest.approx(fit.fit_median)
