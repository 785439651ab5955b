"""Each batching policy does what its module says (LinearStepModel, hand-derived expectations)."""

import pytest

from paretoserve.errors import UserError
from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

MODEL = LinearStepModel(0.01, 1e-4)


def run(requests, policy, **kwargs):
    kwargs.setdefault("kv_tokens", 1 << 16)
    kwargs.setdefault("step_model", MODEL)
    return {r.request_id: r for r in simulate(requests, policy=policy, **kwargs)}


def test_unknown_policy_and_option_name_the_known_ones():
    known = "vllm, orca, sarathi, priority, slo, lengthaware, sglang, trtllm"
    with pytest.raises(UserError, match=f"known policies: {known}"):
        run([Request("a", 0.0, 10, 2)], "fifo")
    with pytest.raises(UserError, match="no option chunk"):
        run([Request("a", 0.0, 10, 2)], "vllm", policy_options={"chunk": 3})


def test_orca_prefills_a_prompt_whole():
    request = [Request("a", 0.0, 300, 1)]
    orca = run(request, "orca", max_num_seqs=8, max_num_batched_tokens=128)["a"]
    vllm = run(request, "vllm", max_num_seqs=8, max_num_batched_tokens=128)["a"]
    assert orca.ttft_s == pytest.approx(0.01 + 1e-4 * 300)                 # one step, over budget
    assert vllm.ttft_s == pytest.approx(3 * 0.01 + 1e-4 * 300)             # three chunks


def test_orca_admits_only_prompts_that_fit_the_remaining_budget():
    requests = [Request("a", 0.0, 100, 2), Request("b", 0.0, 100, 2)]
    records = run(requests, "orca", max_num_seqs=8, max_num_batched_tokens=150)
    assert records["b"].scheduled_s == pytest.approx(records["a"].first_token_s)


def test_sarathi_prefills_fixed_chunks():
    record = run([Request("a", 0.0, 200, 1)], "sarathi", policy_options={"chunk_size": 64})["a"]
    assert record.ttft_s == pytest.approx(4 * 0.01 + 1e-4 * 200)           # 64 + 64 + 64 + 8


def test_priority_swaps_out_the_less_urgent_request():
    # a (priority 0) is decoding alone when b (priority -1, more urgent) arrives at 25 ms; with one
    # sequence slot, b preempts a, which is swapped out (162 tokens of KV × 1 ms) and later back in.
    requests = [Request("a", 0.0, 160, 10, priority=0), Request("b", 0.025, 100, 1, priority=-1)]
    records = run(requests, "priority", step_model=LinearStepModel(0.01), max_num_seqs=1,
                  kv_bytes_per_token=1e6, swap_bandwidth=1e9)
    a, b = records["a"], records["b"]
    swap = 162 * 1e6 / 1e9
    assert a.first_token_s == pytest.approx(0.01)
    assert b.first_token_s == pytest.approx(0.03 + 0.01 + swap)            # b's prefill + a's swap-out
    assert a.preemptions == 1 and b.preemptions == 0
    # a resumes without recompute: swap-in + its 7 remaining decode steps (tokens 4..10).
    assert a.last_token_s == pytest.approx(b.last_token_s + 0.01 + swap + 6 * 0.01)


def test_priority_serves_the_most_urgent_waiting_first():
    requests = [Request("busy", 0.0, 100, 30), Request("low", 0.01, 100, 2, priority=5),
                Request("high", 0.02, 100, 2, priority=1)]
    records = run(requests, "priority", max_num_seqs=2)
    assert records["high"].scheduled_s < records["low"].scheduled_s


def test_slo_serves_the_earliest_attainable_deadline_first():
    busy = Request("busy", 0.0, 100, 200)                                  # holds the only slot ~2 s
    batch = Request("batch", 0.1, 100, 2, slo_class="batch")               # deadline 10.1 s
    chat = Request("chat", 0.2, 100, 2, slo_class="chat")
    options = {"ttft_s:batch": 10.0, "ttft_s:chat": 5.0}                   # chat: deadline 5.2 s
    records = run([busy, batch, chat], "slo", max_num_seqs=1, policy_options=options)
    assert records["chat"].scheduled_s < records["batch"].scheduled_s      # FCFS would not
    fcfs = run([busy, batch, chat], "vllm", max_num_seqs=1)
    assert fcfs["batch"].scheduled_s < fcfs["chat"].scheduled_s


def test_slo_puts_unattainable_deadlines_last():
    busy = Request("busy", 0.0, 100, 200)
    batch = Request("batch", 0.1, 100, 2, slo_class="batch")               # deadline 10.1 s: attainable
    chat = Request("chat", 0.2, 100, 2, slo_class="chat")                  # deadline 1.2 s: missed at ~2 s
    options = {"ttft_s:batch": 10.0, "ttft_s:chat": 1.0}
    records = run([busy, batch, chat], "slo", max_num_seqs=1, policy_options=options)
    assert records["batch"].scheduled_s < records["chat"].scheduled_s


def test_lengthaware_admits_short_prompts_before_long_ones():
    requests = [Request("busy", 0.0, 100, 50), Request("long", 0.01, 4000, 2),
                Request("short", 0.02, 100, 2)]
    records = run(requests, "lengthaware", max_num_seqs=1, policy_options={"threshold": 1000})
    assert records["short"].scheduled_s < records["long"].scheduled_s
    fcfs = run(requests, "vllm", max_num_seqs=1)
    assert fcfs["long"].scheduled_s < fcfs["short"].scheduled_s


def test_lengthaware_keeps_a_budget_share_for_long_prompts():
    # Budget 1000, long share 0.25: short prompts take 750 tokens (s0 700, s1 50) and the waiting
    # long prompt starts at once with 250; without the share it waits behind every short prompt.
    requests = [Request("long", 0.0, 2000, 1)] + [Request(f"s{i}", 0.0, 700, 1) for i in range(4)]

    def schedule(share):
        rows = []
        records = {r.request_id: r for r in simulate(
            requests, step_model=MODEL, kv_tokens=1 << 16, policy="lengthaware", max_num_seqs=8,
            max_num_batched_tokens=1000, policy_options={"threshold": 1000, "long_share": share},
            on_iteration=rows.append)}
        return records, rows[0]

    records, first = schedule(0.25)
    assert (first.prefill_seqs, first.prefill_tokens) == (3, 1000)
    assert records["long"].scheduled_s == 0.0
    records, first = schedule(0.0)
    assert (first.prefill_seqs, first.prefill_tokens) == (2, 1000)
    assert records["long"].scheduled_s >= records["s3"].scheduled_s > 0.0
