"""MoE as served: parallel layout, routing imbalance, grouped-GEMM and all-to-all fits, attention-DP
in the simulator, and per-GPU expert memory under EP. Expected values are hand calculations
(written out in each test) or rows of the shipped H100 kernel tables (cited by their columns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paretoserve.calibrate.a2a_fit import fit_table
from paretoserve.calibrate.moe_fit import fit_grouped_gemm, read_moe_table
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.errors import UserError
from paretoserve.perf import alltoall, routing
from paretoserve.perf.estimate import estimate
from paretoserve.perf.grouped_gemm import SHIPPED
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.roofline import A2A_LL, MOE_IN, MOE_SEL, Roofline
from paretoserve.perf.routing import Routing, expected_max_load
from paretoserve.perf.shape import StepShape
from paretoserve.sim.deployment import build_deployment
from paretoserve.sim.run_config import SimulateConfig
from prereq import missing

KERNELS = next((p for p in (Path(__file__).resolve().parents[k] / "shared" / "data" / "kernels" / "h100_sxm"
                            for k in (2, 3)) if p.exists()), None)
DEEPEP = "comm/sglang/0.5.12/wideep_deepep_{}_perf.parquet"


def _kernels() -> Path:
    if KERNELS is None:
        missing("../shared/data/kernels/h100_sxm not present")
    assert KERNELS is not None
    return KERNELS


def test_expected_max_load_small_cases_by_hand():
    """Enumerating all outcomes: 2 selections on 2 ranks: max 2 w.p. 1/2, else 1 -> 1.5.
    3 on 2: max 3 w.p. 2/8, else 2 -> 2.25. 4 on 4 (256 outcomes): max 1 in 4! = 24, max 4 in 4,
    max 3 in 4·3·C(4,3) = 48, max 2 in the other 180 -> (24 + 360 + 144 + 16) / 256 = 2.125."""
    assert expected_max_load(2, 2) == pytest.approx(1.5, abs=1e-12)
    assert expected_max_load(3, 2) == pytest.approx(2.25, abs=1e-12)
    assert expected_max_load(4, 4) == pytest.approx(544 / 256, abs=1e-12)
    assert expected_max_load(10, 1) == 10.0


def test_binomial_approximation_agrees_with_the_exact_value_at_the_limit(monkeypatch):
    """Above EXACT_LIMIT the independent-binomial approximation is used; at the limit it is within
    3% of the exact recursion (the module docstring's claim)."""
    n = routing.EXACT_LIMIT
    exact = routing._exact_expected_max(n, 8)
    mean, sd = n / 8, (n / 8 * 7 / 8) ** 0.5
    monkeypatch.setattr(routing, "EXACT_LIMIT", 0)
    approx = routing.expected_max_load.__wrapped__(n, 8)  # uncached: the approximation
    assert mean + sd < exact < mean + 3 * sd
    assert approx == pytest.approx(exact, rel=0.03)


def test_skew_and_eplb():
    """skew multiplies max/mean (capped at R); one redundant expert per rank removes the skew."""
    base = Routing().max_over_mean(4, 4)
    assert base == pytest.approx(2.125)  # 2.125 / (4 / 4)
    assert Routing(skew=1.5).max_over_mean(4, 4) == pytest.approx(min(4.0, 2.125 * 1.5))
    assert Routing(skew=3.0).max_over_mean(4, 4) == 4.0  # capped: every selection on one rank
    assert Routing(skew=3.0, redundant_experts=4).max_over_mean(4, 4) == pytest.approx(base)
    assert Routing(skew=3.0, redundant_experts=2).effective_skew(4) == pytest.approx(2.0)  # halfway
    with pytest.raises(UserError, match="skew must be >= 1"):
        Routing(skew=0.5)


def test_layout_validation():
    lay = ParallelLayout(tp=4, attention_dp=4, ep=16)
    assert (lay.moe_tp, lay.devices, lay.rank_devices) == (1, 16, 4)
    assert ParallelLayout(tp=2).moe_tp == 2  # experts sharded like attention by default
    with pytest.raises(UserError, match=r"MoE TP 2 × EP 4 must equal attention TP 4 × DP 1"):
        ParallelLayout(tp=4, moe_tp=2, ep=4)
    with pytest.raises(UserError, match="--ep 3 does not divide"):
        ParallelLayout(tp=4, ep=3)
    with pytest.raises(UserError, match="dense"):
        ParallelLayout(tp=2, ep=2).check(load_model("Qwen3-8B"))
    with pytest.raises(UserError, match="does not divide Qwen3-30B-A3B's 128 experts"):
        ParallelLayout(tp=1, attention_dp=6, ep=6).check(load_model("Qwen3-30B-A3B"))


def test_estimate_with_ep_divides_expert_weights_per_gpu():
    """Qwen3-30B-A3B (bf16): 48 MoE layers × 128 experts × 3 × 2048 × 768 weights × 2 bytes =
    57,982,058,496 B of routed experts; the rest (attention, router, embeddings, norms) stays whole on
    a TP1 rank. With attention-DP 4 and EP 4 each GPU keeps a quarter of the experts."""
    experts = 48 * 128 * 3 * 2048 * 768 * 2
    one = estimate("Qwen3-30B-A3B", "h100_sxm", tp=1).kv.weight_bytes_per_device
    ep4 = estimate("Qwen3-30B-A3B", "h100_sxm", tp=1, dp_attention=4, ep=4).kv.weight_bytes_per_device
    assert one - ep4 == pytest.approx(experts * 3 / 4, rel=1e-12)


def test_ep_decode_reads_a_quarter_of_the_expert_weights():
    """One decode of 512 sequences on TP4 touches all 128 experts (1 − (1 − 8/128)^512 ≈ 1); with EP4
    a GPU holds 32 whole experts instead of a quarter of each of the 128: the same bytes. EPLB with
    32 redundant experts gives each rank 40 slots -> 40/32 of the bytes."""
    model, dev = load_model("Qwen3-30B-A3B"), load_device("h100_sxm")
    step = StepShape(decode=(1000,) * 512)

    def expert_bytes(layout):
        st = Roofline(model, dev, layout=layout).step_time(step)
        return next(op.bytes for op in st.ops if op.name == "moe.experts")

    tp4 = expert_bytes(ParallelLayout(tp=4))
    ep4 = expert_bytes(ParallelLayout(tp=4, ep=4))
    eplb = expert_bytes(ParallelLayout(tp=4, ep=4, routing=Routing(redundant_experts=32)))
    act = 48 * 4 * 2048 * 512 * 8  # activations: 4 × hidden bytes per selection (all on one rank at TP4)
    assert (tp4 - act) == pytest.approx(48 * 128 * 3 * 2048 * 768 / 4 * 2, rel=1e-6)
    assert (ep4 - 48 * 4 * 2048 * 512 * 8 / 4 * Routing().max_over_mean(512 * 8, 4)) == \
        pytest.approx(tp4 - act, rel=1e-6)
    assert eplb > ep4


def test_alltoall_against_measured_deepep_rows():
    """wideep_deepep_ll_perf (SGLang 0.5.12, H100, node_num 1 = EP8): hidden 7168, num_token 128,
    top-8, 256 experts: dispatch 36.721 µs, combine 66.981 µs. wideep_deepep_normal_perf, same shape
    at 4096 tokens, fastest SM setting (20 SMs): dispatch 492.2 µs; (24 SMs) combine 960.6 µs."""
    model = alltoall.a2a_model(load_device("h100_sxm"), 8, 0.8)
    sel = 128 * 8 * 7 / 8
    dispatch = model.ll_dispatch.seconds(sel * alltoall.dispatch_bytes_per_selection(7168))
    combine = model.ll_combine.seconds(sel * alltoall.combine_bytes_per_selection(7168))
    assert dispatch == pytest.approx(36.721e-6, rel=0.10)
    assert combine == pytest.approx(66.981e-6, rel=0.10)
    both = alltoall.layer_seconds(model, tokens_per_gpu=4096, top_k=8, hidden=7168, ep=8, prefill=True)
    assert both == pytest.approx(492.16e-6 + 960.61e-6, rel=0.10)


def test_shipped_constants_are_the_fits_of_the_shipped_tables():
    root = _kernels()
    dev = load_device("h100_sxm")
    table = read_moe_table(root / "moe/vllm/0.19.0/moe_perf.parquet")
    for dtype, shipped in SHIPPED.items():
        fit = fit_grouped_gemm(table, dtype, dev)
        for name in ("fixed_s", "compute_eff", "memory_eff", "permute_eff", "half_tokens"):
            assert getattr(fit, name) == pytest.approx(getattr(shipped, name), rel=0.02), (dtype, name)
    got = fit_table(root / DEEPEP.format("ll"), "ll", "dispatch")
    assert got.bandwidth == pytest.approx(alltoall.H100_DEEPEP.ll_dispatch.bandwidth, rel=0.01)
    assert got.latency_s == pytest.approx(alltoall.H100_DEEPEP.ll_dispatch.latency_s, rel=0.01)


def test_attention_dp_simulates_one_engine_per_rank():
    """--dp-attention 4 --ep 4 with TP1: four engines, each with its own KV cache on one GPU, holding
    a quarter of the experts, so more KV per rank than a TP1 replica holding all experts."""
    base = dict(model="Qwen3-30B-A3B", hardware="h100_sxm", requests=8, prompt="128", output="8", rate=1.0)
    single = build_deployment(SimulateConfig(**base))
    adp = build_deployment(SimulateConfig(**base, dp_attention=4, ep=4))
    assert (single.replicas, adp.replicas) == (1, 4)
    assert adp.engine is not None and single.engine is not None
    assert adp.engine.devices == 1
    assert adp.engine.kv_tokens > single.engine.kv_tokens
    # The MoE of each rank sees the 4 ranks' tokens: 8 decodes × 4 ranks × top-8 = 256 selections
    # enter; the busiest of the 4 EP ranks computes 256 / 4 × E[max]/mean of them.
    agg = adp.engine.step_model.aggregates(StepShape(decode=(1000,) * 8))
    assert agg[MOE_IN] == 8 * 4 * 8
    assert agg[MOE_SEL] == pytest.approx(256 / 4 * expected_max_load(256, 4) / 64)
    assert agg[A2A_LL] == 8  # this rank dispatches its own 8 tokens (decode-only step: low-latency kernels)
