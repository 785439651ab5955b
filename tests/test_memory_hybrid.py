"""Memory as vLLM allocates it: hybrid KV groups (sliding-window layers capped, Mamba state per
sequence) and per-module weight dtypes of quantized checkpoints. Every expected figure below is a
hand calculation from the bundled config.json written out in the test."""

import math

import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.constant import LinearStepModel
from paretoserve.perf.memory import kv_capacity, kv_layout, runtime_reserve_bytes, weight_bytes
from paretoserve.perf.roofline import Roofline, gemm_compute_dtype
from paretoserve.perf.shape import StepShape
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

# gpt-oss-120b config.json: hidden 2880, 36 layers alternating sliding (window 128) / full attention,
# 64 query heads and 8 KV heads of 64, 128 experts of width 2880 (top-4), vocabulary 201,088.
OSS_H, OSS_LAYERS, OSS_VOCAB, OSS_EXPERTS = 2880, 36, 201_088, 128


def test_gpt_oss_weights_keep_attention_router_embeddings_and_lm_head_in_bf16():
    """modules_to_not_convert lists self_attn, mlp.router, embed_tokens and lm_head: those are bf16,
    the routed experts MXFP4 (half a byte per value)."""
    model = load_model("gpt-oss-120b")
    d = model.dtypes()
    assert (d.attention, d.router, d.embedding, d.lm_head, d.experts) == ("bf16",) * 4 + ("fp4",)
    h = OSS_H
    attention = h * (4096 + 512 + 512) + 4096 * h + (4096 + 512 + 512 + h)   # q, k, v, o + biases
    expert = 3 * h * h + 2 * h + h                                           # gate, up, down + biases
    router = h * OSS_EXPERTS + OSS_EXPERTS
    norms = OSS_LAYERS * 2 * h + h
    tables = 2 * OSS_VOCAB * h                                               # embedding + LM head
    bf16 = OSS_LAYERS * (attention + router) + norms + tables
    fp4 = OSS_LAYERS * OSS_EXPERTS * expert
    assert weight_bytes(model) == 2 * bf16 + 0.5 * fp4


def test_gpt_oss_attention_and_lm_head_bytes_priced_in_bf16():
    """A one-token decode step reads the qkv weights (2880 × 5120) and the LM head (2880 × 201,088)
    in bf16, 2 bytes each; the experts it touches at 0.5 bytes per value."""
    roof = Roofline(load_model("gpt-oss-120b"), load_device("h200_sxm"))
    ops = {op.name: op for op in roof.step_time(StepShape(decode=(1000,))).ops}
    h = OSS_H
    qkv = OSS_LAYERS * (h * 5120 * 2 + (h + 5120) * 2)                 # weights + activations in/out
    assert ops["attn.qkv_proj"].bytes == pytest.approx(qkv)
    lm_head = h * OSS_VOCAB * 2 + h * 2 + 4 * OSS_VOCAB                 # weights + hidden in + fp32 logits
    assert ops["lm_head"].bytes == pytest.approx(lm_head)
    experts = OSS_LAYERS * (4 * 3 * h * h * 0.5 + 4 * 2 * h * 2)       # top-4 experts hit by one token
    assert ops["moe.experts"].bytes == pytest.approx(experts)


def test_fp4_and_int8_gemms_run_at_their_rate_only_where_the_device_has_it():
    """Datasheet peaks: B200 has fp4 and int8 math, H100 int8 but no fp4 (weight-only: bf16)."""
    b200, h100 = load_device("b200"), load_device("h100_sxm")
    assert gemm_compute_dtype("fp4", b200) == "fp4" and b200.peak_flops("fp4") == 9.0e15
    assert gemm_compute_dtype("fp4", h100) == "bf16"
    assert gemm_compute_dtype("int8", h100) == "int8" and gemm_compute_dtype("int4", b200) == "bf16"
    roof = Roofline(load_model("gpt-oss-120b"), b200)
    assert roof.gemm_peak["experts"] == pytest.approx(9.0e15 * roof.eff.gemm)
    assert roof.gemm_peak["attention"] == pytest.approx(b200.peak_flops("bf16") * roof.eff.gemm)


def test_quantized_checkpoints_mark_their_unquantized_modules():
    """NVIDIA's Llama-3.1-70B FP8: hf_quant_config.json says FP8 and excludes only lm_head.
    Qwen3-235B-FP8 lists layer norms and mlp.gate (routers) — not attention. Kimi-K2.5 ignores
    self_attn, shared experts and the dense MLP: only its routed experts are int4."""
    llama = load_model("Llama-3.1-70B-Instruct-FP8").dtypes()
    assert (llama.attention, llama.mlp, llama.lm_head, llama.embedding) == ("fp8", "fp8", "bf16", "bf16")
    qwen = load_model("Qwen3-235B-A22B-FP8").dtypes()
    assert (qwen.attention, qwen.experts, qwen.router) == ("fp8", "fp8", "bf16")
    kimi = load_model("Kimi-K2.5").dtypes()
    assert (kimi.attention, kimi.mlp, kimi.experts) == ("bf16", "bf16", "int4")
    # A --weight-dtype override quantizes only what the checkpoint would: gpt-oss attention stays bf16.
    oss = load_model("gpt-oss-120b").dtypes("fp8")
    assert (oss.attention, oss.experts, oss.lm_head) == ("bf16", "fp8", "bf16")


def test_gpt_oss_capacity_caps_the_sliding_window_layers():
    """18 full and 18 sliding layers, each 2 × 8 × 64 × 2 = 2,048 bytes per token (bf16): a block of
    16 tokens is 18 × 2,048 × 16 = 589,824 bytes. A sliding layer holds at most
    ceil(127 / 16) + 1 = 9 blocks, which (same shapes) is 9 more pool blocks per sequence."""
    model, dev = load_model("gpt-oss-120b"), load_device("h200_sxm")
    cap = kv_capacity(model, dev, max_num_batched_tokens=8192, max_num_seqs=256)
    free = 0.9 * dev.mem_capacity - weight_bytes(model) - runtime_reserve_bytes(model, 1, 8192, 256)
    blocks = int(free // (18 * 2048 * 16))
    assert cap.blocks == blocks
    assert cap.layout.fixed_blocks(8192) == 9 and cap.layout.fixed_blocks(20) == 2  # 2 blocks of window
    assert cap.max_sequences(8192) == blocks // (512 + 9)
    # Charging the sliding layers the whole context (as before) would admit about half as many.
    assert cap.max_sequences(8192) > 1.9 * (blocks // (2 * 512))


def test_nemotron_h_reserves_its_mamba_state_per_sequence():
    """Nemotron-H-56B: 10 attention layers (8 KV heads of 128) and 54 Mamba-2 layers (256 heads of 64,
    state 256, 8 groups, conv kernel 4). Per sequence each Mamba layer keeps a conv state of
    (256·64 + 2·8·256) × 3 = 61,440 and an SSM state of 256·64·256 = 4,194,304 values in fp32:
    54 × 4,255,744 × 4 = 919,240,704 bytes ≈ 0.92 GB, split over TP 2. A 16-token block of the
    attention layers at TP 2 is 10 × 2 × 4 × 128 × 2 × 16 = 327,680 bytes."""
    model, dev = load_model("Nemotron-H-56B-Base-8K"), load_device("h100_sxm")
    layout = kv_layout(model, tp=2, pp=1, kv_dtype=None)
    state = 54 * ((256 * 64 + 2 * 8 * 256) * 3 + 256 * 64 * 256) * 4
    assert state == 919_240_704
    assert layout.block_bytes == 327_680 and layout.state_bytes == state / 2
    assert layout.fixed_blocks(8192) == math.ceil(state / 2 / 327_680) == 1403
    cap = kv_capacity(model, dev, tp=2)
    assert cap.max_sequences(8192) == cap.blocks // (512 + 1403)


@pytest.mark.parametrize("model_name", ["gpt-oss-20b", "Nemotron-H-56B-Base-8K"])
def test_simulator_admits_exactly_the_sequences_the_capacity_counts(model_name):
    """40 requests of 1,000 prompt tokens and 1 output token arrive together in a small pool:
    the first iteration admits max_sequences(1,001) of them — not blocks // 63 as full attention
    alone would."""
    layout = kv_layout(load_model(model_name), tp=2, pp=1, kv_dtype=None)
    blocks = 2000 if model_name == "gpt-oss-20b" else 6000
    fits = blocks // layout.sequence_blocks(1001)
    assert 1 <= fits < blocks // 63
    requests = [Request(str(i), 0.0, 1000, 1) for i in range(40)]
    records = list(simulate(requests, step_model=LinearStepModel(0.01), kv_tokens=blocks * 16,
                            max_num_seqs=64, max_num_batched_tokens=64_000, kv_layout=layout,
                            prefix_caching=False))
    first = sum(r.scheduled_s == 0.0 for r in records)
    assert first == fits and len(records) == 40 and all(r.ok for r in records)
