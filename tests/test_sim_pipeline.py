"""Pipeline parallelism: up to pp batches in flight, one per stage (vLLM `step_with_batch_queue`).

Stage seconds = (full latency − (pp − 1) sends) × slowest stage's layer share + one send; a batch's
iteration takes pp × stage seconds and the first stage takes the next batch a stage later. The
expected values are summed by hand from those rules and from the step model's own figures.
"""

import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.pipeline import slowest_stage_share, stage_layers
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import OpTime, StepShape, StepTime
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

A, B, SEND = 0.01, 1e-4, 0.002  # toy model: full latency A + B × tokens, one send SEND


class _Toy(StepTimeModel):
    """Two even stages: full latency A + B × tokens (including its one send of SEND seconds)."""

    pp = 2
    stage_share = 0.5

    def step_time(self, shape: StepShape) -> StepTime:
        seconds = A + B * shape.num_tokens
        return StepTime(seconds, (OpTime("step", seconds, 0.0, 0.0, "overhead"),))

    def pp_send_seconds(self, tokens: int) -> float:
        return SEND


def stage(tokens: int) -> float:
    """Hand formula: the stage holds the batch for half the compute plus one send."""
    return (A + B * tokens - SEND) * 0.5 + SEND


def test_vllm_layer_split_puts_the_remainder_before_the_last_stage():
    """vLLM get_pp_indices: 61 layers on 4 stages → 15, 15, 16, 15 (DeepSeek-V3 at PP4)."""
    assert stage_layers(61, 4) == (15, 15, 16, 15)
    assert stage_layers(80, 2) == (40, 40)
    assert slowest_stage_share(61, 4) == pytest.approx(16 / 61)


def test_single_request_takes_pp_stage_times_per_iteration():
    """Prompt 100, 3 tokens out: prefill iteration 2 × stage(100), then 2 decodes of 2 × stage(1)."""
    (rec,) = simulate([Request("a", 0.0, 100, 3)], step_model=_Toy(), kv_tokens=4096)
    assert rec.ttft_s == pytest.approx(2 * stage(100), abs=1e-12)
    assert rec.e2e_s == pytest.approx(2 * stage(100) + 2 * 2 * stage(1), abs=1e-12)
    # Versus the same compute without pipeline stages (no sends): never faster.
    assert rec.ttft_s >= A + B * 100 - SEND


def test_second_batch_enters_when_the_first_stage_frees():
    """max_num_seqs 2 → one sequence per lane. a's prefill enters at 0; b's at stage(100), when the
    first stage frees; a decodes as soon as it returns (2 stage(100)), b at 3 stage(100)."""
    recs = {r.request_id: r for r in simulate([Request("a", 0.0, 100, 2), Request("b", 0.0, 100, 2)],
                                              step_model=_Toy(), kv_tokens=4096, max_num_seqs=2)}
    p, d = stage(100), stage(1)
    assert recs["a"].scheduled_s == 0.0 and recs["b"].scheduled_s == pytest.approx(p)
    assert recs["a"].first_token_s == pytest.approx(2 * p) and recs["b"].first_token_s == pytest.approx(3 * p)
    assert recs["a"].last_token_s == pytest.approx(2 * p + 2 * d)
    assert recs["b"].last_token_s == pytest.approx(3 * p + 2 * d)


def test_tp4_pp2_decode_throughput_beats_tp4_by_the_micro_batch_factor():
    """Llama-3.1-70B on H100 SXM, 512 requests (prompt 32, 512 out) all at t = 0, max_num_seqs 256.

    TP4: batches of 256 in lock-step, TPOT = mean T(256, context) over the 511 decode iterations.
    TP4×PP2: two micro-batches of 128 alternate; each decode iteration takes 2 × stage with
    stage = (T(128) − s) × 40/80 + s, T the roofline's full-model latency and s one send of 128
    hidden states (10 µs + 128 × 8192 × 2 B / (450 GB/s × 0.8)). With 256 sequences decoding in both,
    decode throughput ∝ 1 / TPOT, so the factor is TPOT(TP4) / TPOT(TP4×PP2).
    """
    model, device = load_model("Meta-Llama-3.1-70B"), load_device("h100_sxm")
    tp4, pp2 = Roofline(model, device, tp=4), Roofline(model, device, tp=4, pp=2)
    out, k = 512, 511
    send = 10e-6 + 128 * 8192 * 2 / (450e9 * 0.8)
    assert pp2.pp_send_seconds(128) == pytest.approx(send)
    tpot_tp4 = tp4.decode_run_seconds(256, 256 * 33, k) / k
    tpot_pp2 = sum(2 * ((pp2.decode_seconds(128, 128 * (33 + j)) - send) * 0.5 + send) for j in range(k)) / k
    predicted = tpot_tp4 / tpot_pp2

    def mean_tpot_and_throughput(step_model):
        reqs = [Request(str(i), 0.0, 32, out) for i in range(512)]
        recs = list(simulate(reqs, step_model=step_model, kv_tokens=600_000, max_num_seqs=256))
        tpot = sum(r.tpot_s for r in recs) / len(recs)
        return tpot, sum(r.output_tokens for r in recs) / max(r.last_token_s for r in recs)

    tpot_a, thr_a = mean_tpot_and_throughput(tp4)
    tpot_b, thr_b = mean_tpot_and_throughput(pp2)
    assert tpot_a == pytest.approx(tpot_tp4, rel=1e-3)
    assert tpot_b == pytest.approx(tpot_pp2, rel=0.01)  # + the few waits while the lanes fall in step
    assert tpot_a / tpot_b == pytest.approx(predicted, rel=0.01)
    assert predicted > 1.1
    assert thr_b / thr_a > 1.1  # end to end (prefill waves included) PP2 serves more too
