"""Prefix caching: a request whose leading blocks are cached computes only the rest."""

import pytest

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

MODEL = LinearStepModel(0.01, 1e-4)


def computed_prefill_tokens(requests, **kwargs):
    rows = []
    records = list(simulate(requests, step_model=MODEL, kv_tokens=1 << 16, on_iteration=rows.append,
                            **kwargs))
    return sum(row.prefill_tokens for row in rows), {r.request_id: r for r in records}


def test_shared_prefix_is_not_computed_twice():
    hashes = (5, 6, 7)        # Mooncake-style: 512 tokens per hash, the last one partial
    requests = [Request("a", 0.0, 1100, 2, hashes), Request("b", 1.0, 1100, 2, hashes)]
    total, records = computed_prefill_tokens(requests)
    shared = 1088             # 68 full 16-token blocks: all the prompt's full blocks
    assert records["b"].cached_prompt_tokens == shared and records["a"].cached_prompt_tokens == 0
    assert total == 2 * 1100 - shared
    off, _ = computed_prefill_tokens(requests, prefix_caching=False)
    assert off == 2 * 1100


def test_only_the_common_leading_hashes_hit():
    requests = [Request("a", 0.0, 1100, 2, (5, 6, 7)), Request("b", 1.0, 1100, 2, (5, 6, 9)),
                Request("c", 2.0, 1100, 2, (4, 6, 7))]
    _, records = computed_prefill_tokens(requests)
    assert records["b"].cached_prompt_tokens == 1024     # the first two 512-token blocks
    assert records["c"].cached_prompt_tokens == 0        # a different first block breaks the chain


def test_cache_hit_shortens_ttft():
    hashes = (1, 2, 3, 4)
    requests = [Request("a", 0.0, 2000, 2, hashes), Request("b", 1.0, 2000, 2, hashes)]
    _, records = computed_prefill_tokens(requests)
    assert records["a"].ttft_s == pytest.approx(0.01 + 1e-4 * 2000)
    assert records["b"].ttft_s == pytest.approx(0.01 + 1e-4 * (2000 - 1984))
