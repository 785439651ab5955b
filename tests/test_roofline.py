"""Roofline step times and KV capacity against hand calculations written here."""

from __future__ import annotations

import pytest

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.model import load_model
from paretoserve.errors import UserError
from paretoserve.perf.memory import kv_capacity
from paretoserve.perf.roofline import Efficiency, Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape

IDEAL = Efficiency(gemm=1.0, attention=1.0, memory=1.0, link=1.0, kernel_latency_s=0.0, step_overhead_s=0.0)
# Llama-3.1-8B linear weights per layer: q,o 4096², k,v 4096×1024, gate/up/down 4096×14336.
LLAMA8_LAYER_LINEAR = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
VOCAB, HIDDEN, LAYERS = 128256, 4096, 32


def device(peak: float, bandwidth: float, memory: float = 80e9) -> DeviceSpec:
    """A made-up device with round numbers, built on a real catalog entry's other fields."""
    base = load_device("h100_sxm")
    flops = {"fp32": peak, "bf16": peak, "fp16": peak, "fp8": 2 * peak}
    return base.model_copy(update={"flops": flops, "mem_bandwidth": bandwidth, "mem_capacity": memory})


def test_prefill_compute_bound_by_hand():
    model = load_model("Meta-Llama-3.1-8B")
    dev = device(peak=1e15, bandwidth=1e30)
    prompt = 4096
    step = Roofline(model, dev, efficiency=IDEAL).step_time(StepShape(prefill=(PrefillChunk(prompt),)))
    linear = 2 * prompt * LAYERS * LLAMA8_LAYER_LINEAR
    lm_head = 2 * 1 * HIDDEN * VOCAB  # only the last prompt token is sampled
    attention = LAYERS * 4 * 32 * 128 * prompt * (prompt + 1) / 2  # causal pairs
    assert step.seconds == pytest.approx((linear + lm_head + attention) / 1e15, rel=1e-6)


def test_decode_memory_bound_by_hand():
    model = load_model("Meta-Llama-3.1-8B")
    dev = device(peak=1e30, bandwidth=1e12)
    context = 1000
    step = Roofline(model, dev, efficiency=IDEAL).step_time(StepShape(decode=(context,)))
    weights = 2 * (LAYERS * LLAMA8_LAYER_LINEAR + HIDDEN * VOCAB)
    kv_read = context * LAYERS * 2 * 8 * 128 * 2
    # One token's activations (bf16): GEMM inputs and outputs, attention Q/K/V/O + KV write,
    # two RMSNorms with residual (4 × hidden each), embedding row (read + write), fp32 logits.
    per_layer = 2 * ((4096 + 6144) + (4096 + 4096) + (4096 + 3 * 14336)
                     + (2 * 4096 + 2048) + 2 * 4 * 4096) + 2 * 1024 * 2
    activations = LAYERS * per_layer + 2 * 2 * HIDDEN + (2 * HIDDEN + 4 * VOCAB)
    assert step.seconds == pytest.approx((weights + kv_read + activations) / 1e12, rel=1e-6)
    assert {op.bound for op in step.ops if op.seconds > 0} == {"memory"}


def test_tensor_parallel_halves_weights_and_adds_allreduce():
    model = load_model("Meta-Llama-3.1-8B")
    dev = device(peak=1e30, bandwidth=1e12)
    one = Roofline(model, dev, efficiency=IDEAL).step_time(StepShape(decode=(10,)))
    two = Roofline(model, dev, tp=2, efficiency=IDEAL).step_time(StepShape(decode=(10,)))
    ops = {op.name: op for op in two.ops}
    # Two all-reduces per layer of hidden × 2 bytes; at TP2 on NVLink vLLM runs its one-shot custom
    # all-reduce (perf.comm constants): 4.25 µs + 0.08 µs × (2 − 1) + (2 − 1) × size / (450 GB/s × 0.600).
    size = HIDDEN * 2
    expected_ar = 2 * LAYERS * (4.25e-6 + 0.08e-6 + size / (450e9 * 0.600))
    assert ops["tp.allreduce"].seconds == pytest.approx(expected_ar, rel=1e-9)
    assert two.seconds - ops["tp.allreduce"].seconds == pytest.approx(one.seconds / 2, rel=0.02)


def test_decode_run_closed_form_equals_step_sum():
    for name in ("Meta-Llama-3.1-8B", "gpt-oss-20b", "Qwen3-30B-A3B", "DeepSeek-V3"):
        model = load_model(name)
        rf = Roofline(model, load_device("h200_sxm"), tp=8 if name == "DeepSeek-V3" else 1)
        for n, ctx_sum, k in ((1, 50, 300), (64, 64 * 900, 200), (256, 256 * 100, 1000)):
            stepped = sum(rf.decode_seconds(n, ctx_sum + i * n) for i in range(k))
            assert rf.decode_run_seconds(n, ctx_sum, k) == pytest.approx(stepped, rel=1e-9)


def test_decode_regime_switch_is_summed_exactly():
    # A device where attention turns compute-bound part way through the run.
    model = load_model("Meta-Llama-3.1-8B")
    rf = Roofline(model, device(peak=2e12, bandwidth=1e12), efficiency=IDEAL)
    stepped = sum(rf.decode_seconds(8, 8 * 10 + i * 8) for i in range(500))
    assert rf.decode_run_seconds(8, 80, 500) == pytest.approx(stepped, rel=1e-12)


def test_kv_capacity_by_hand():
    model = load_model("Meta-Llama-3.1-8B")
    dev = device(peak=1e15, bandwidth=1e12, memory=80e9)
    cap = kv_capacity(model, dev, gpu_memory_utilization=0.9, max_num_batched_tokens=2048, max_num_seqs=256)
    weights = 8_030_261_248 * 2  # bf16
    reserve = 0.75 * 2**30 + 2048 * (3 * 14336 + 4 * 4096) * 2 + 256 * VOCAB * 4
    free = 0.9 * 80e9 - weights - reserve
    # vLLM cuts the free memory into whole 16-token blocks of 32 layers × 2 × 8 heads × 128 × 2 bytes.
    assert cap.blocks == int(free // (16 * 32 * 2 * 8 * 128 * 2)) and cap.tokens == cap.blocks * 16
    assert cap.max_sequences(4096) == cap.tokens // 4096


def test_kv_capacity_matches_real_vllm_run_within_5_percent():
    # vLLM 0.19 on an RTX 4090 (meta.json in shared/data/serving_runs): 2,588 blocks × 16 tokens.
    model = load_model("Meta-Llama-3.1-8B")
    cap = kv_capacity(model, load_device("rtx_4090"), gpu_memory_utilization=0.9,
                      max_num_batched_tokens=2048, max_num_seqs=256)
    assert cap.tokens == pytest.approx(2588 * 16, rel=0.05)


def test_model_that_does_not_fit_says_what_it_needs():
    with pytest.raises(UserError, match="does not fit.*need about"):
        kv_capacity(load_model("Meta-Llama-3.1-70B"), load_device("l4"))


def test_tp_must_divide_heads():
    with pytest.raises(UserError, match="valid TP sizes: 1, 2, 4, 8"):
        Roofline(load_model("Meta-Llama-3.1-8B"), load_device("h100_sxm"), tp=3)
