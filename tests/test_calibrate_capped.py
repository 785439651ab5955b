"""Replaying bench runs whose load generator capped the requests in flight (`bench --concurrency`).

The replay must send each request when the *simulated* server frees a slot, not at the recorded send
time: checked against a brute-force reference built from the public `simulate()` (one simulation per
request, exact by causality), and on a saturated run where a small service-time error must stay small.
"""

from __future__ import annotations

import numpy as np
import pytest

from paretoserve.calibrate.run_fit import (
    RunSetup,
    latency_stats,
    run_setup,
    simulate_setup,
    step_model_for,
)
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.calibrated import Coefficients
from paretoserve.runs import RunWriter, read_run
from paretoserve.sim.api import simulate
from paretoserve.workload.request import Request

MODEL, DEVICE = "SmolLM2-135M-Instruct", "l4"  # ~3 ms per step with the 2 ms step overhead below


def _setup(n: int, rate: float, cap: int, max_num_seqs: int, closed: bool = False, seed: int = 0) -> RunSetup:
    rng = np.random.default_rng(seed)
    arrivals = np.zeros(n) if closed else np.cumsum(rng.exponential(1 / rate, n))
    requests = [Request(f"r{i}", float(a), int(rng.integers(16, 200)), int(rng.integers(2, 40)))
                for i, a in enumerate(arrivals)]
    return RunSetup(load_model(MODEL), load_device(DEVICE), 1, 1, 8192, 16, max_num_seqs, 512, False, requests,
                    {}, {}, cap, {q.request_id: q.arrival_s for q in requests})


def _reference(setup: RunSetup, step) -> dict[str, tuple[float, float, float]]:
    """(send, first token, last token) per request: request i is sent at max(its schedule, the
    previous send, the time fewer than `cap` of the earlier ones are still running), found by
    simulating the earlier ones alone (later sends cannot change what happens before them).
    A send at a completion instant goes out just after it, as a client answering that completion."""
    cap, sends = setup.max_in_flight, []

    def run(prefix: list[Request]):
        return {r.request_id: r for r in simulate(prefix, step_model=step, kv_tokens=setup.kv_tokens,
                                                   max_num_seqs=setup.max_num_seqs,
                                                   max_num_batched_tokens=setup.max_num_batched_tokens,
                                                   prefix_caching=False)}

    for i, q in enumerate(setup.requests):
        send = max(setup.scheduled_s[q.request_id], sends[-1].arrival_s if sends else 0.0)
        if i >= cap:
            ends = sorted((r.last_token_s for r in run(sends).values()), reverse=True)
            if ends[cap - 1] >= send:
                send = ends[cap - 1] + 1e-9
        sends.append(Request(q.request_id, send, q.prompt_tokens, q.output_tokens))
    return {k: (r.arrival_s, r.first_token_s, r.last_token_s) for k, r in run(sends).items()}


@pytest.mark.parametrize(("rate", "cap", "max_num_seqs", "closed"),
                         [(40.0, 2, 1, False), (200.0, 3, 4, False), (1.0, 4, 2, True)])
def test_capped_replay_matches_brute_force(rate, cap, max_num_seqs, closed):
    setup = _setup(30, rate, cap, max_num_seqs, closed)
    step = step_model_for(setup, None, Coefficients(step_overhead_s=2e-3))
    got = {r.request_id: (r.arrival_s, r.first_token_s, r.last_token_s) for r in simulate_setup(setup, step)}
    want = _reference(setup, step)
    assert got.keys() == want.keys()
    for key, times in want.items():
        assert got[key] == pytest.approx(times, abs=1e-6), key
    bound = [v for k, v in got.items() if v[0] > setup.scheduled_s[k] + 1e-9]
    assert bound, "the cap never held a request back: the test does not exercise it"


def _write(folder, setup: RunSetup, records, config: dict) -> None:
    with RunWriter(folder, config, keep_partial=False) as writer:
        for record in sorted(records, key=lambda r: r.arrival_s):
            record.extra["lag_s"] = record.arrival_s - setup.scheduled_s[record.request_id]
            writer.add(record)


def test_saturated_capped_run_tolerates_a_small_service_error(tmp_path):
    # Offered load above capacity, at most 2 in flight: the cap holds most requests back.
    setup = _setup(60, 40.0, 2, 1)
    truth = Coefficients(step_overhead_s=2e-3)
    measured = simulate_setup(setup, step_model_for(setup, None, truth))
    config = {"command": "bench", "model": MODEL, "concurrency": 2, "rate": 40.0, "arrival": "poisson"}
    _write(tmp_path / "run", setup, measured, config)
    replay = run_setup(read_run(tmp_path / "run"), hardware=DEVICE, max_num_seqs=1,
                       max_num_batched_tokens=512, kv_tokens=8192, prefix_caching=False)
    assert replay.max_in_flight == 2 and "max_in_flight" in replay.notes
    # 5% slower service everywhere: latencies must move by about 5%, not pile up into a queue.
    slower = Coefficients(compute_scale=1 / 1.05, memory_scale=1 / 1.05, step_overhead_s=2.1e-3)
    want = latency_stats(replay.measured.values())
    got = latency_stats(simulate_setup(replay, step_model_for(replay, None, slower)))
    for metric in ("ttft", "e2e"):
        assert got[metric]["mean"] == pytest.approx(want[metric]["mean"] * 1.05, rel=0.03), metric
    # ... whereas replaying the recorded send times (no cap) lets the error grow along the run
    replay.max_in_flight = None
    open_loop = latency_stats(simulate_setup(replay, step_model_for(replay, None, slower)))
    assert open_loop["ttft"]["mean"] > want["ttft"]["mean"] * 1.3


def test_closed_loop_bench_run_is_sent_as_soon_as_a_slot_frees(tmp_path):
    setup = _setup(12, 1.0, 3, 2, closed=True)
    records = simulate_setup(setup, step_model_for(setup, None, Coefficients()))
    config = {"command": "bench", "model": MODEL, "concurrency": 3, "rate": None, "rate_scale": None,
              "arrival": None}
    _write(tmp_path / "closed", setup, records, config)
    replay = run_setup(read_run(tmp_path / "closed"), hardware=DEVICE)
    assert replay.max_in_flight == 3
    assert set(replay.scheduled_s.values()) == {0.0}
    uncapped = {"command": "bench", "model": MODEL, "concurrency": None, "rate": 1.0}
    _write(tmp_path / "open", setup, records, uncapped)
    assert run_setup(read_run(tmp_path / "open"), hardware=DEVICE).max_in_flight is None
