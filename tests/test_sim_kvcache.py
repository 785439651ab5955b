"""Paged KV blocks: exhaustion preempts the newest request by recompute without losing or
duplicating any; the prefix cache shares blocks by hash and evicts least-recently freed ones."""

import pytest

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.sim.kvcache import BlockManager
from paretoserve.sim.sequence import Sequence
from paretoserve.workload.request import Request

MODEL = LinearStepModel(0.01, 1e-4, 1e-7)


def crowd(n=40, prompt=200, output=300):
    return [Request(str(i), 0.001 * i, prompt, output) for i in range(n)]


@pytest.mark.parametrize("fast", [True, False])
def test_kv_exhaustion_preempts_and_every_request_finishes_exactly_once(fast):
    requests = crowd()
    rows = []
    sim = simulate(requests, step_model=MODEL, kv_tokens=4096, max_num_seqs=64,
                   max_num_batched_tokens=2048, fast=fast, on_iteration=rows.append)
    records = list(sim)
    ids = [r.request_id for r in records]
    assert sorted(ids) == sorted(r.request_id for r in requests)   # none lost, none twice
    assert sim.stats.preemptions > 0
    assert sum(r.preemptions for r in records) == sim.stats.preemptions
    assert all(r.ok and r.output_tokens == 300 for r in records)
    assert all(r.arrival_s <= r.scheduled_s <= r.first_token_s <= r.last_token_s for r in records)
    assert max(row.kv_used for row in rows) <= 1.0
    replica = sim.front[0]
    assert replica.kv.used == 0 and not replica.running and replica.n_dec == 0


def test_the_newest_running_request_is_the_one_preempted():
    # Two requests whose decodes outgrow 20 blocks: the later one is preempted, the earlier not.
    requests = [Request("old", 0.0, 100, 200), Request("new", 0.0, 100, 200)]
    records = {r.request_id: r for r in simulate(requests, step_model=MODEL, kv_tokens=320)}
    assert records["old"].preemptions == 0
    assert records["new"].preemptions >= 1
    assert records["old"].last_token_s < records["new"].last_token_s


def test_without_kv_pressure_nothing_is_preempted():
    sim = simulate(crowd(), step_model=MODEL, kv_tokens=1 << 20)
    assert all(r.preemptions == 0 for r in sim) and sim.stats.preemptions == 0


def seq(uid, prompt, hashes=(), block_tokens=64):
    """A sequence whose prefix hashes cover `block_tokens` tokens (4 blocks of 16) each."""
    return Sequence(Request(str(uid), 0.0, prompt, 1, tuple(hashes), block_tokens), uid, 16)


def test_prefix_blocks_are_shared_and_refcounted():
    kv = BlockManager(100, 16)
    a = seq(0, 128, (7, 8))               # 8 blocks in 2 hashed groups of 4
    kv.take(8)
    kv.register(a, 128)
    assert len(a.shared) == 2 and a.shared_blocks == 8 and kv.used == 8
    b = seq(1, 200, (7, 8, 9))
    keys, hit, evictable = kv.match(b, (200 - 1) // 16)
    assert (len(keys), hit, evictable) == (2, 8, 0)            # a still holds them; (9, 2) missing
    kv.acquire(keys)
    b.shared, b.shared_blocks = keys, hit
    kv.take(13 - 8)                                             # b's own blocks beyond the prefix
    assert kv.used == 13
    kv.release(a, 8, park=False)
    assert kv.used == 13 and kv.refs[keys[0]] == 1              # b keeps the shared blocks alive
    kv.release(b, 13, park=False)
    assert kv.used == 0 and kv.free == 100 and kv.evictable_blocks == 8


def test_free_cached_blocks_are_evicted_last_and_in_lru_order():
    kv = BlockManager(12, 16)
    a = seq(0, 128, (1, 2))
    kv.take(8)
    kv.register(a, 128)
    kv.release(a, 8, park=False)       # last group first: the prefix survives longest
    assert kv.free == 12 and kv.evictable_blocks == 8
    kv.take(4)                         # plain free blocks go first
    assert kv.evictable_blocks == 8
    kv.take(1)                         # then the least recently freed group, whole
    assert [key[1] for key in kv.evictable] == [0] and kv.free == 7 and kv.free_plain == 3


def test_evictable_hits_count_against_free_blocks():
    kv = BlockManager(12, 16)
    a = seq(0, 128, (1, 2))
    kv.take(8)
    kv.register(a, 128)
    kv.release(a, 8, park=False)
    keys, hit, evictable = kv.match(seq(1, 200, (1, 2, 3)), 12)
    assert (hit, evictable) == (8, 8)
    kv.acquire(keys)
    assert kv.free == 4 and kv.used == 8


def test_a_recomputed_request_reuses_its_own_cached_blocks():
    kv = BlockManager(100, 16)
    a = seq(0, 100)
    kv.take(7)
    a.computed = 100
    kv.release(a, 7, park=True)        # preempted: its 6 full blocks stay cached, 1 partial is freed
    assert kv.evictable_blocks == 6 and kv.free_plain == 94
    a.computed, a.generated, a.preemptions = 0, 5, 1
    keys, hit, _ = kv.match(a, (105 - 1) // 16)
    assert len(keys) == 6 and hit == 6
