"""Which all-reduces a step runs, by parallel layout (`paretoserve.perf.roofline.allreduces_of`),
against counts worked out by hand from engine_facts §3 "Data parallel + expert parallel" and vLLM's
FusedMoE (DP dispatch / combine, then the all-reduce over the attention TP group).

Qwen3-235B-A22B: 94 layers, each GQA attention + a MoE block (128 experts, top-8, no shared
experts), hidden 4096. DeepSeek-V3: 61 MLA layers, the first 3 with a dense MLP, 58 MoE."""

from __future__ import annotations

import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf import comm
from paretoserve.perf.calibrated import Calibrated
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.roofline import AllReduce, Roofline, allreduces_of
from paretoserve.perf.shape import StepShape

QWEN = load_model("Qwen3-235B-A22B")
DSV3 = load_model("DeepSeek-V3")
H100 = load_device("h100_sxm")


@pytest.mark.parametrize("layout,expected", [
    # TP4 with EP4, no attention-DP: every GPU holds every token; one all-reduce over the 4 GPUs
    # after attention and one after the MoE block (experts 1 × 4 over the same GPUs): 2 × 94.
    (ParallelLayout(tp=4, ep=4), [AllReduce(188, 4)]),
    # attention TP4 × DP4, EP16 (vLLM --enable-expert-parallel): the all-to-all combines across
    # the DP ranks, then the TP all-reduce inside each DP rank — the same 2 × 94 over 4 GPUs.
    (ParallelLayout(tp=4, attention_dp=4, ep=16), [AllReduce(188, 4)]),
    # attention TP1 × DP8, experts TP-sharded over the 8 GPUs (no EP): no attention all-reduce;
    # per MoE block the all-gather of 8 ranks' tokens + reduce-scatter ≈ one all-reduce of 8 ×
    # the rank's tokens over 8 GPUs (before: nothing at all, since tp = 1).
    (ParallelLayout(tp=1, attention_dp=8), [AllReduce(94, 8, 8.0)]),
    # attention TP2 × DP2, experts TP-sharded over 4: 94 + 94 over the TP pair (attention, and the
    # TP partial sums after the DP reduce-scatter) and 94 DP gathers/scatters of 2 × tokens.
    (ParallelLayout(tp=2, attention_dp=2), [AllReduce(188, 2), AllReduce(94, 2, 2.0)]),
    # attention TP1 × DP4, experts moe_tp 2 × EP 2: the all-to-all combines across EP; each expert's
    # two shards reduce the selections the rank received, 4 ranks × top-8 / EP 2 = 16 per own token.
    (ParallelLayout(tp=1, attention_dp=4, moe_tp=2, ep=2), [AllReduce(94, 2, 16.0)]),
])
def test_allreduces_follow_the_layout(layout, expected):
    assert list(allreduces_of(QWEN, layout)) == expected


def test_dense_first_layers_and_tp16():
    """DeepSeek-V3 at TP16 / EP16 without attention-DP: 61 attention + 3 dense MLP + 58 MoE
    all-reduces, all over the 16 GPUs."""
    assert allreduces_of(DSV3, ParallelLayout(tp=16, ep=16)) == (AllReduce(61 + 3 + 58, 16),)


def test_roofline_and_calibrated_price_each_all_reduce_over_its_group():
    """tp1 × DP8 (vLLM Qwen3-235B disaggregated decode row): a 16-token step costs 94 all-reduces of
    8 × 16 × 4096 × 2 bytes over 8 GPUs (`perf.comm`), in both step models (no all-reduce table)."""
    layout = ParallelLayout(tp=1, attention_dp=8)
    expected = 94 * comm.allreduce_seconds(H100, 8, 8 * 16 * 4096 * 2)
    shape = StepShape(decode=(500,) * 16)
    for model in (Roofline(QWEN, H100, layout=layout), Calibrated(QWEN, H100, layout=layout)):
        ops = {op.name: op for op in model.step_time(shape).ops}
        assert ops["tp.allreduce"].seconds == pytest.approx(expected, rel=1e-12)
        assert ops["tp.allreduce"].bytes == pytest.approx(94 * 8 * 16 * 4096 * 2)
