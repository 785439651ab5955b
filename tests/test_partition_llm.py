"""LLM stages on different GPU types: the chain's stage times sum to the step model's step time, the
cut sends tokens × hidden × 2 bytes, and mixed-layer models are refused."""

from __future__ import annotations

import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.links import load_link
from paretoserve.catalog.model import load_model
from paretoserve.errors import UserError
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.plan.partition import evaluate_partitions
from paretoserve.plan.partition_llm import llm_chain


def test_one_stage_is_the_step_model():
    """On one device the only candidate's stage time is Roofline's prefill step of 4 × 2048 tokens."""
    model, h100 = load_model("Meta-Llama-3.1-8B"), load_device("h100_sxm")
    chain = llm_chain(model, phase="prefill", sequences=4, tokens=2048)
    (only,) = evaluate_partitions(chain, [h100], [])
    step = Roofline(model, h100).seconds(StepShape(prefill=(PrefillChunk(2048, 0, True),) * 4))
    assert only.stage_s == pytest.approx((step,))
    assert only.throughput_pipelined == pytest.approx(4 / step)


def test_two_gpu_types_by_hand():
    """H100 + L40S over a 100 Gb/s, 10 µs link, decode of 32 sequences at context 4096: every split's
    transfer is 10 µs + 32 × 4096 × 2 B / 12.5e9 B/s; stage times add up to the per-layer split of
    each device's step time."""
    model = load_model("Meta-Llama-3.1-8B")
    h100, l40s = load_device("h100_sxm"), load_device("l40s")
    chain = llm_chain(model, phase="decode", sequences=32, tokens=4096)
    parts = evaluate_partitions(chain, [h100, l40s], [load_link("100Gbps@10us")], fixed_order=True)
    assert len(parts) == 33  # cuts after the embedding and after each of the 32 layers
    transfer = 10e-6 + 32 * 4096 * 2 / 12.5e9
    assert all(p.transfer_s == pytest.approx((transfer,)) for p in parts)
    shape = StepShape(decode=(4096,) * 32)
    half = next(p for p in parts if p.splits[0].block == "layers.16")
    t_h100, t_l40s = (Roofline(model, d).step_time(shape) for d in (h100, l40s))

    def split(step, first: bool) -> float:
        ops = {op.name: op.seconds for op in step.ops}
        layers = sum(v for k, v in ops.items() if k not in ("embed", "lm_head")) / 32
        return ops["embed"] + 16 * layers if first else 16 * layers + ops["lm_head"]

    assert half.stage_s == pytest.approx((split(t_h100, True), split(t_l40s, False)))
    assert half.throughput_pipelined == pytest.approx(32 / max(*half.stage_s, transfer))


def test_mixed_layer_models_are_refused():
    mixed = next(m for m in ("Nemotron-H-56B-Base-8K", "gpt-oss-20b") if len(load_model(m).layer_groups) > 1)
    with pytest.raises(UserError, match="kinds of layers"):
        llm_chain(load_model(mixed))


def test_attention_offload_by_hand():
    """Llama-3.1-8B decode, 64 sequences at context 8192, attention + KV on H100, the rest on L40S, over
    a 400 Gb/s, 5 µs link. Per layer the new tokens send Q, K, V up ((4096 + 2·8·128) × 2 B each) and
    the attention output down (4096 × 2 B): up = 32 × 5 µs + 64 × 32 × 6144 × 2 / 5e10 s. Throughput
    pipelined = 64 / max(dense, attention, up, down, latency / 3)."""
    from paretoserve.plan.partition_llm import attention_offload

    model = load_model("Meta-Llama-3.1-8B")
    h100, l40s = load_device("h100_sxm"), load_device("l40s")
    p = attention_offload(model, l40s, h100, load_link("400Gbps@5us"), phase="decode", sequences=64, tokens=8192)
    shape = StepShape(decode=(8192,) * 64)
    dense = sum(op.seconds for op in Roofline(model, l40s).step_time(shape).ops if not op.name.startswith("attn.")
                or op.name.endswith("_proj"))
    attention = sum(op.seconds for op in Roofline(model, h100).step_time(shape).ops
                    if op.name in ("attn.prefill", "attn.decode"))
    up = 32 * 5e-6 + 64 * 32 * 6144 * 2 / 5e10
    down = 32 * 5e-6 + 64 * 32 * 4096 * 2 / 5e10
    assert p.stage_s == pytest.approx((dense, attention))
    assert p.transfer_s == pytest.approx((up, down))
    latency = dense + attention + up + down
    assert p.latency_s == pytest.approx(latency)
    assert p.throughput_pipelined == pytest.approx(64 / max(dense, attention, up, down, latency / 3))
    assert p.throughput_sequential == pytest.approx(64 / latency)
    assert p.label == "attention+KV on h100_sxm, rest on l40s"
