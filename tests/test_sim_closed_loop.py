"""Closed-loop load in the simulator: C users, each sending its next request when its previous one
completes (`simulate(..., concurrency=C)` and `simulate --concurrency C`).

With a constant step time every user's requests run in lockstep, so the hand calculation is exact:
a request of P prompt and M output tokens takes M steps (the first token comes with the prefill
step, then M - 1 decode steps), and C users complete C requests every M steps — Little's law,
throughput = C / (M × step).
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
from paretoserve.sim.closed_loop import SteadyWindow
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.request import Request

STEP = 0.01


def _closed(users: int, n: int, prompt: int, output: int, *, max_num_seqs: int = 256,
            step: LinearStepModel | None = None):
    requests = [Request(str(i), 0.0, prompt, output) for i in range(n)]
    return list(simulate(requests, step_model=step or LinearStepModel(STEP), kv_tokens=1 << 20,
                         max_num_seqs=max_num_seqs, max_num_batched_tokens=1 << 16, prefix_caching=False,
                         concurrency=users))


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
    window = SteadyWindow(users, n)
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
