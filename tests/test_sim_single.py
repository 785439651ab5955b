"""Hand-summed step times: one request on an idle replica, chunked prefill, a second arrival
admitted at the next iteration boundary (LinearStepModel: base + per token + per decode context)."""

import pytest

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

BASE, PER_TOKEN, PER_CONTEXT = 0.01, 1e-4, 1e-6
MODEL = LinearStepModel(BASE, PER_TOKEN, PER_CONTEXT)


def run(requests, **kwargs):
    kwargs.setdefault("kv_tokens", 65536)
    return {r.request_id: r for r in simulate(requests, step_model=MODEL, **kwargs)}


@pytest.mark.parametrize("fast", [True, False])
def test_single_request_ttft_and_e2e_are_the_summed_steps(fast):
    record = run([Request("a", 0.5, 100, 4)], fast=fast)["a"]
    prefill = 0.01 + 1e-4 * 100                 # 100 prompt tokens, no decodes
    decodes = [0.01 + 1e-4 * 1 + 1e-6 * ctx for ctx in (101, 102, 103)]  # context incl. the new token
    assert record.scheduled_s == pytest.approx(0.5)
    assert record.ttft_s == pytest.approx(prefill, abs=1e-12)
    assert record.e2e_s == pytest.approx(prefill + sum(decodes), abs=1e-12)
    assert record.output_tokens == 4 and record.preemptions == 0 and record.replica == 0


def test_long_prompt_is_prefilled_in_chunks_of_the_token_budget():
    record = run([Request("a", 0.0, 300, 2)], max_num_seqs=8, max_num_batched_tokens=128)["a"]
    chunks = (0.01 + 1e-4 * 128) + (0.01 + 1e-4 * 128) + (0.01 + 1e-4 * 44)
    assert record.ttft_s == pytest.approx(chunks, abs=1e-12)
    assert record.e2e_s == pytest.approx(chunks + 0.01 + 1e-4 + 1e-6 * 301, abs=1e-12)


@pytest.mark.parametrize("fast", [True, False])
def test_arrival_during_a_step_joins_at_the_next_boundary_in_a_mixed_batch(fast):
    records = run([Request("a", 0.0, 100, 3), Request("b", 0.015, 50, 2)], fast=fast)
    a, b = records["a"], records["b"]
    step1 = 0.01 + 1e-4 * 100                                # a's prefill: [0, 0.02)
    step2 = 0.01 + 1e-4 * (1 + 50) + 1e-6 * 101              # a decodes, b prefills 50 tokens
    step3 = 0.01 + 1e-4 * 2 + 1e-6 * (102 + 51)              # both decode
    assert b.scheduled_s == pytest.approx(step1)             # seen at the boundary, not on arrival
    assert b.first_token_s == pytest.approx(step1 + step2, abs=1e-12)
    assert a.last_token_s == pytest.approx(step1 + step2 + step3, abs=1e-12)
    assert b.last_token_s == pytest.approx(step1 + step2 + step3, abs=1e-12)


def test_iteration_trace_rows_cover_every_iteration():
    rows = []
    sim = simulate([Request("a", 0.0, 100, 50)], step_model=MODEL, kv_tokens=4096, on_iteration=rows.append)
    record = next(iter(sim))
    assert sum(row.iterations for row in rows) == 50          # one prefill + 49 decodes
    assert rows[0].prefill_tokens == 100 and rows[0].decode_seqs == 0
    assert sum(row.duration_s for row in rows) == pytest.approx(record.e2e_s)
    assert all(0.0 < row.kv_used <= 1.0 for row in rows)


def test_itl_samples_are_the_decode_step_durations():
    samples = []
    list(simulate([Request("a", 0.0, 100, 4)], step_model=MODEL, kv_tokens=4096, fast=False,
                  on_itl=lambda value, count: samples.append((value, count))))
    assert [count for _, count in samples] == [1, 1, 1]
    assert [value for value, _ in samples] == pytest.approx(
        [0.01 + 1e-4 + 1e-6 * ctx for ctx in (101, 102, 103)])


def test_requests_must_arrive_in_order_and_fit_the_context():
    from paretoserve.errors import UserError

    with pytest.raises(UserError, match="sorted by arrival"):
        run([Request("a", 1.0, 10, 2), Request("b", 0.5, 10, 2)])
    with pytest.raises(UserError, match="context of 100 tokens"):
        run([Request("a", 0.0, 90, 20)], max_model_len=100)


def test_a_request_larger_than_the_kv_cache_fails_alone():
    records = run([Request("big", 0.0, 5000, 10), Request("ok", 0.0, 100, 2)], kv_tokens=1024)
    assert records["big"].error.startswith("kv_capacity") and records["big"].output_tokens == 0
    assert records["ok"].ok
