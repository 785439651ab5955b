"""Data-parallel replicas behind routers."""

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

MODEL = LinearStepModel(0.01, 1e-4, 1e-7)


def replicas_of(requests, router, n=2):
    records = simulate(requests, step_model=MODEL, kv_tokens=1 << 16, replicas=n, router=router)
    return {r.request_id: r.replica for r in records}


def test_round_robin_alternates():
    requests = [Request(str(i), 0.1 * i, 100, 5) for i in range(6)]
    placed = replicas_of(requests, "round_robin")
    assert [placed[str(i)] for i in range(6)] == [0, 1, 0, 1, 0, 1]


def test_least_outstanding_avoids_the_busy_replica():
    # "long" keeps replica 0 busy; the short ones that follow all go to replica 1 while it runs
    # (each finishes before the next arrives), then both are free again and ties go to replica 0.
    requests = [Request("long", 0.0, 100, 400)] + [Request(f"s{i}", 0.5 + i, 100, 5) for i in range(3)]
    requests.append(Request("late", 10.0, 100, 5))
    placed = replicas_of(requests, "least_outstanding")
    assert placed["long"] == 0
    assert [placed[f"s{i}"] for i in range(3)] == [1, 1, 1]
    assert placed["late"] == 0


def test_least_outstanding_balances_a_burst():
    requests = [Request(str(i), 0.0, 100, 50) for i in range(9)]
    placed = replicas_of(requests, "least_outstanding", n=3)
    assert sorted(list(placed.values()).count(k) for k in range(3)) == [3, 3, 3]


def test_prefix_affinity_follows_the_cached_prefix():
    shared = (11, 12, 13)
    requests = [Request("first", 0.0, 1500, 2, shared), Request("other", 0.0, 1500, 2, (21, 22, 23))]
    requests += [Request(f"again{i}", 1.0 + i, 1500, 2, shared) for i in range(3)]
    placed = replicas_of(requests, "prefix_affinity")
    assert placed["first"] != placed["other"]
    assert all(placed[f"again{i}"] == placed["first"] for i in range(3))
