"""The fast path (k decode iterations at once) gives the same records as stepping one iteration
at a time, to floating-point rounding — under every policy, with KV pressure, preemption, prefix
caching, several replicas and disaggregation, and with the roofline step-time model."""

import random

import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.constant import LinearStepModel
from paretoserve.perf.roofline import Roofline
from paretoserve.sim import DisaggConfig, EngineConfig, simulate
from paretoserve.sim.schedulers import POLICIES
from paretoserve.workload.request import Request

LINEAR = LinearStepModel(0.005, 2e-5, 3e-8)


def workload(n, rate, seed, hashes=False):
    rng = random.Random(seed)
    t, requests = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        prompt, output = rng.randint(1, 2000), rng.randint(1, 400)
        prefix = ()
        if hashes:  # a few common first blocks, then mostly distinct ones
            prefix = tuple([rng.randint(0, 3)] + [rng.randint(0, 50) for _ in range(prompt // 512)])
        requests.append(Request(str(i), t, prompt, output, prefix, priority=rng.randint(0, 2)))
    return requests


def assert_same(requests, **kwargs):
    fast = sorted(simulate(requests, fast=True, **kwargs), key=lambda r: int(r.request_id))
    slow = sorted(simulate(requests, fast=False, **kwargs), key=lambda r: int(r.request_id))
    assert len(fast) == len(slow) == len(requests)
    for a, b in zip(fast, slow, strict=True):
        assert (a.request_id, a.output_tokens, a.preemptions, a.replica, a.cached_prompt_tokens) == \
               (b.request_id, b.output_tokens, b.preemptions, b.replica, b.cached_prompt_tokens)
        for field in ("scheduled_s", "first_token_s", "last_token_s"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-12, abs=1e-9)
    return fast


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("kv_tokens,hashes", [(6000, True), (200_000, False)])
def test_fast_equals_step_by_step_for_every_policy(policy, kv_tokens, hashes):
    records = assert_same(workload(200, 8.0, seed=1, hashes=hashes), step_model=LINEAR,
                          kv_tokens=kv_tokens, policy=policy, max_num_seqs=64, max_num_batched_tokens=2048,
                          kv_bytes_per_token=131072, swap_bandwidth=32e9)
    if kv_tokens == 6000:  # KV pressure: every policy preempts, except trtllm's no-evict reservations
        preemptions = sum(r.preemptions for r in records)
        assert preemptions == 0 if policy == "trtllm" else preemptions > 0


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("router", ["round_robin", "least_outstanding", "prefix_affinity"])
def test_fast_equals_step_by_step_across_replicas_and_disaggregation(router, seed):
    requests = workload(300, 20.0, seed=seed, hashes=True)
    assert_same(requests, step_model=LINEAR, kv_tokens=12000, replicas=3, router=router,
                max_num_seqs=64, max_num_batched_tokens=2048)
    engine = EngineConfig(LINEAR, kv_tokens=12000, max_num_seqs=64, max_num_batched_tokens=2048)
    disagg = DisaggConfig(2, 1, engine, engine, kv_bytes_per_token=131072, link_bandwidth=25e9)
    assert_same(requests, disagg=disagg, router=router)


def test_fast_equals_step_by_step_with_the_roofline():
    roofline = Roofline(load_model("Meta-Llama-3.1-8B"), load_device("h100_sxm"))
    assert_same(workload(400, 12.0, seed=3), step_model=roofline, kv_tokens=60_000)


@pytest.mark.parametrize("options,prefix_caching", [
    ({"mixed_chunk": 1}, True),                                   # decodes mixed into prefill batches
    ({"ignore_eos": 1, "chunked_prefill_size": 512}, False),      # run-to-completion KV check
    ({"schedule_conservativeness": 0.3, "max_prefill_tokens": 1024}, True),
])
def test_fast_equals_step_by_step_for_sglang_variants(options, prefix_caching):
    """SGLang's prefill-first ordering, mixed chunks and both KV admission checks keep the fast path
    exact (block size 1, SGLang's page size)."""
    assert_same(workload(200, 8.0, seed=4, hashes=prefix_caching), step_model=LINEAR, kv_tokens=6000,
                block_size=1, policy="sglang", policy_options=options, prefix_caching=prefix_caching,
                max_num_seqs=64, max_num_batched_tokens=2048)
