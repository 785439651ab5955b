"""Closed-loop load in the simulator: C users, each sending its next request when its previous one
completes (`simulate(..., concurrency=C)` and `simulate --concurrency C`).

With a constant step time every user's requests run in lockstep, so the hand calculation is exact:
a request of P prompt and M output tokens takes M steps (the first token comes with the prefill
step, then M - 1 decode steps), and C users complete C requests every M steps — Little's law,
throughput = C / (M × step).

The collected protocol (aiperf, `paretoserve.sim.closed_loop`): a warm-up phase of W requests that
drains, then the measured requests with all C users sending at once; checked against the same
kind of hand calculation with an engine that runs k sequences at a time.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim.api import simulate, simulate_run
from paretoserve.sim.closed_loop import MeasuredWindow
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.request import Request

STEP = 0.01


def _closed(users: int, n: int, prompt: int, output: int, *, max_num_seqs: int = 256,
            step: LinearStepModel | None = None, warmup: int = 0):
    requests = [Request(str(i), 0.0, prompt, output) for i in range(n)]
    return list(simulate(requests, step_model=step or LinearStepModel(STEP), kv_tokens=1 << 20,
                         max_num_seqs=max_num_seqs, max_num_batched_tokens=1 << 16, prefix_caching=False,
                         concurrency=users, warmup=warmup))


def _check_users(records, users: int) -> None:
    """Every user has at most one request in flight, and never more than `users` are in flight."""
    by_user = defaultdict(list)
    for r in records:
        by_user[r.extra["user"]].append(r)
    assert set(by_user) <= set(range(users))
    for mine in by_user.values():
        mine.sort(key=lambda r: r.arrival_s)
        for before, after in zip(mine, mine[1:], strict=False):
            assert after.arrival_s >= before.last_token_s - 1e-12
    events = sorted([(r.arrival_s, 1) for r in records] + [(r.last_token_s, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    in_flight = 0
    for _, delta in events:
        in_flight += delta
        assert in_flight <= users


@settings(max_examples=25, deadline=None)
@given(users=st.integers(1, 24), rounds=st.integers(1, 5), prompt=st.integers(1, 300),
       output=st.integers(2, 40))
def test_lockstep_closed_loop_obeys_littles_law(users, rounds, prompt, output):
    n = users * (3 + rounds)
    records = _closed(users, n, prompt, output)
    assert len(records) == n
    _check_users(records, users)
    cycle = output * STEP
    for i, r in enumerate(sorted(records, key=lambda r: (r.arrival_s, int(r.request_id)))):
        assert r.arrival_s == pytest.approx((i // users) * cycle)
        assert r.e2e_s == pytest.approx(cycle)
    # The summary of the measured window: throughput is C / (time per request), exactly.
    window = MeasuredWindow(users, n)
    measured = [r for r in records if window.measured(r)]
    assert len(measured) == n - 3 * users
    span = max(r.last_token_s for r in measured) - min(r.arrival_s for r in measured)
    assert len(measured) / span == pytest.approx(users / cycle)


@settings(max_examples=25, deadline=None)
@given(users=st.integers(1, 12), seqs=st.integers(1, 12), data=st.data())
def test_users_never_overlap_with_mixed_lengths_and_a_small_engine(users, seqs, data):
    lengths = data.draw(st.lists(st.tuples(st.integers(1, 200), st.integers(1, 30)), min_size=1, max_size=40))
    requests = [Request(str(i), 0.0, p, o) for i, (p, o) in enumerate(lengths)]
    records = list(simulate(requests, step_model=LinearStepModel(STEP, per_token_s=1e-5), kv_tokens=1 << 16,
                            max_num_seqs=seqs, max_num_batched_tokens=4096, prefix_caching=False,
                            concurrency=users))
    assert sorted(r.request_id for r in records) == sorted(q.request_id for q in requests)
    _check_users(records, users)
    # Sends are in request order; the first C go out at 0, every later one at a completion.
    sends = sorted(records, key=lambda r: int(r.request_id))
    assert [r.arrival_s for r in sends] == sorted(r.arrival_s for r in sends)
    assert all(r.arrival_s == 0.0 for r in sends[:users])
    for i, r in enumerate(sends[users:], start=users):
        assert any(q.last_token_s == r.arrival_s for q in sends[:i])


@settings(max_examples=25, deadline=None)
@given(seqs=st.integers(1, 4), groups=st.integers(1, 4), rounds=st.integers(5, 20), prompt=st.integers(1, 300),
       output=st.integers(2, 20))
def test_collected_protocol_by_hand(seqs, groups, rounds, prompt, output):
    """Hand calculation: C = g·k users, an engine of k sequences with a constant step s, so requests
    are served k at a time, each group M steps (cycle = M·s). In a phase starting at t0, the phase's
    request j is served from t0 + (j // k)·cycle, sent at t0 (j < C) or at the completion of its
    user's previous request j − C, t0 + ((j − C) // k + 1)·cycle. So TTFT = (j // k)·cycle + s in the
    ramp (j < C) and (g − 1)·cycle + s after it, E2E = g·cycle after the ramp. The warm-up phase of
    W = 2C requests ends at t0 = (W / k)·cycle, where all C users send at once."""
    k, g = seqs, groups
    users, cycle = k * g, output * STEP
    warmup, n = 2 * users, rounds * users
    records = _closed(users, warmup + n, prompt, output, max_num_seqs=k, warmup=warmup)
    _check_users(records, users)
    by_id = {int(r.request_id): r for r in records}
    window = MeasuredWindow(users, n, warmup=warmup, steady=False)
    summarised = sorted(int(r.request_id) for r in records if window.measured(r))
    assert summarised == list(range(warmup, warmup + n))  # exactly the warm-up requests left out
    assert all(by_id[i].extra.get("phase") == "warmup" for i in range(warmup))
    t0 = (warmup // k) * cycle
    assert t0 == pytest.approx(max(by_id[i].last_token_s for i in range(warmup)))  # the warm-up drained
    for phase_start, first, count in ((0.0, 0, warmup), (t0, warmup, n)):
        for j in range(count):
            r = by_id[first + j]
            sent = phase_start if j < users else phase_start + ((j - users) // k + 1) * cycle
            assert r.arrival_s == pytest.approx(sent)
            ttft = (j // k) * cycle + STEP if j < users else (g - 1) * cycle + STEP
            assert r.ttft_s == pytest.approx(ttft)
            if j >= users:
                assert r.e2e_s == pytest.approx(g * cycle)
    mean = STEP + cycle * (k * g * (g - 1) / 2 + (n - users) * (g - 1)) / n
    assert sum(by_id[i].ttft_s for i in summarised) / n == pytest.approx(mean)
    # Little's law in the steady window: C = completion rate × mean time in the system.
    steady = MeasuredWindow(users, n, warmup=warmup)
    kept = [r for r in sorted(records, key=lambda r: (r.last_token_s, int(r.request_id))) if steady.measured(r)]
    assert len(kept) == n - 3 * users
    done = [r.last_token_s for r in kept]
    rate = (len(kept) - k) / (done[-1] - done[0])
    assert rate * sum(r.e2e_s for r in kept) / len(kept) == pytest.approx(users)


def test_simulate_run_collected_protocol(tmp_path):
    """`--warmup 2C --window all`: the 2C warm-up records come first in requests.jsonl, marked and left
    out; the 20C measured ones are all summarised. With every user in one batch (C ≤ max_num_seqs)
    and a roofline step, each phase opens with the same prefill of C prompts, so the first measured
    TTFT equals the first warm-up TTFT."""
    users, n = 3, 60
    config = SimulateConfig(model="SmolLM2-135M-Instruct", hardware="l4", prompt="fixed:128", output="fixed:6",
                            requests=n, concurrency=users, warmup=2 * users, window="all", kv_tokens=1 << 16,
                            prefix_caching=False)
    summary = simulate_run(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == n + 2 * users and summary.completed == n
    phases = [line.get("extra", {}).get("phase") for line in lines]
    assert phases == ["warmup"] * (2 * users) + [None] * n
    warm_end = max(x["last_token_s"] for x in lines[:2 * users])
    measured = lines[2 * users:]
    assert min(x["arrival_s"] for x in measured) == pytest.approx(warm_end)
    assert [x["arrival_s"] for x in measured[:users]] == [pytest.approx(warm_end)] * users
    first_ttft = lines[0]["first_token_s"] - lines[0]["arrival_s"]
    assert measured[0]["first_token_s"] - measured[0]["arrival_s"] == pytest.approx(first_ttft)
    with pytest.raises(UserError, match="shape a closed loop"):
        simulate_run(config.model_copy(update={"rate": 5.0, "arrival": "poisson"}), tmp_path / "open")


def test_simulate_run_closed_loop_summary_and_window(tmp_path):
    users, n, prompt, output = 4, 20, 128, 10
    config = SimulateConfig(model="SmolLM2-135M-Instruct", hardware="l4", prompt="fixed:128", output="fixed:10",
                            requests=n, concurrency=users, kv_tokens=1 << 16, prefix_caching=False)
    summary = simulate_run(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == n
    phases = [line.get("extra", {}).get("phase") for line in lines]
    assert phases[:2 * users] == ["warmup"] * (2 * users)
    assert phases[-users:] == ["cooldown"] * users
    assert phases[2 * users:-users] == [None] * (n - 3 * users)
    assert summary.completed == n - 3 * users
    assert {line["prompt_tokens"] for line in lines} == {prompt}
    assert {line["output_tokens"] for line in lines} == {output}
    measured = [line for line in lines if "phase" not in line.get("extra", {})]
    span = max(x["last_token_s"] for x in measured) - min(x["arrival_s"] for x in measured)
    assert summary.requests_per_s == pytest.approx(len(measured) / span)


def test_closed_loop_needs_requests_beyond_the_window(tmp_path):
    config = SimulateConfig(model="SmolLM2-135M-Instruct", hardware="l4", prompt="8", output="4",
                            requests=12, concurrency=4)
    with pytest.raises(UserError, match="more than 12 requests"):
        simulate_run(config, tmp_path / "run")
    with pytest.raises(UserError, match="needs --requests"):
        simulate_run(config.model_copy(update={"requests": None}), tmp_path / "run")


def test_cli_concurrency_closed_loop_and_capped_open_loop(tmp_path):
    from typer.testing import CliRunner

    import paretoserve.cli.commands  # noqa: F401  (registers the commands)
    from paretoserve.cli.app import app

    base = ["simulate", "--model", "SmolLM2-135M-Instruct", "--hardware", "l4", "--prompt", "fixed:64",
            "--output", "fixed:8", "--requests", "40", "--concurrency", "4"]
    closed = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "closed")])
    assert closed.exit_code == 0, closed.output
    assert json.loads((tmp_path / "closed" / "summary.json").read_text())["completed"] == 40 - 3 * 4
    capped = CliRunner().invoke(app, [*base, "--arrival", "poisson", "--rate", "50", "--out", str(tmp_path / "open")])
    assert capped.exit_code == 0, capped.output
    lines = [json.loads(x) for x in (tmp_path / "open" / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == 40 and json.loads((tmp_path / "open" / "summary.json").read_text())["completed"] == 40
    _check_users([RequestRecord.from_dict(x) for x in lines], 4)
    collected = CliRunner().invoke(app, [*base, "--warmup", "8", "--window", "all", "--out", str(tmp_path / "aiperf")])
    assert collected.exit_code == 0, collected.output
    assert json.loads((tmp_path / "aiperf" / "summary.json").read_text())["completed"] == 40
    assert len((tmp_path / "aiperf" / "requests.jsonl").read_text().splitlines()) == 48
    bad = CliRunner().invoke(app, [*base, "--window", "middle", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "window" in bad.output
