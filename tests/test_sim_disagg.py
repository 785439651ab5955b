"""Disaggregated prefill/decode: TTFT includes the KV transfer (bytes / bandwidth + latency), the
rest is decoded on the decode replica, whose free KV blocks limit admission."""

import pytest

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import DisaggConfig, EngineConfig, simulate
from paretoserve.workload.request import Request

PREFILL = LinearStepModel(0.01, 1e-4)
DECODE = LinearStepModel(0.005, 1e-4, 1e-6)
KV_BYTES, BANDWIDTH, LATENCY = 131072.0, 10e9, 1e-3


def deployment(decode_kv_tokens=1 << 20, prefill=1, decode=1):
    return DisaggConfig(prefill, decode, EngineConfig(PREFILL, kv_tokens=1 << 20),
                        EngineConfig(DECODE, kv_tokens=decode_kv_tokens), kv_bytes_per_token=KV_BYTES,
                        link_bandwidth=BANDWIDTH, link_latency=LATENCY)


@pytest.mark.parametrize("fast", [True, False])
def test_ttft_includes_the_kv_transfer(fast):
    record = next(iter(simulate([Request("a", 0.0, 1000, 3)], disagg=deployment(), fast=fast)))
    prefill = 0.01 + 1e-4 * 1000
    transfer = 1000 * KV_BYTES / BANDWIDTH + LATENCY              # 13.1072 ms + 1 ms
    decodes = (0.005 + 1e-4 + 1e-6 * 1001) + (0.005 + 1e-4 + 1e-6 * 1002)
    assert record.ttft_s == pytest.approx(prefill + transfer, abs=1e-12)
    assert record.e2e_s == pytest.approx(prefill + transfer + decodes, abs=1e-12)
    assert record.replica == 0 and record.extra["decode_replica"] == 1


def test_decode_admission_waits_for_decode_side_kv_blocks():
    # The decode replica holds 1,600 tokens: the second 1,000-token request must wait until the
    # first finishes there, although both were prefilled long before.
    requests = [Request("a", 0.0, 1000, 50), Request("b", 0.0, 1000, 50)]
    records = {r.request_id: r for r in simulate(requests, disagg=deployment(decode_kv_tokens=1600))}
    a, b = records["a"], records["b"]
    assert b.first_token_s < a.last_token_s                      # b's prefill and transfer were done
    assert b.last_token_s - a.last_token_s >= 49 * 0.005          # but it decodes only after a
    assert a.preemptions == b.preemptions == 0


def test_single_token_requests_finish_on_the_prefill_replica():
    record = next(iter(simulate([Request("a", 0.0, 500, 1)], disagg=deployment())))
    assert record.e2e_s == pytest.approx(0.01 + 1e-4 * 500)
    assert "decode_replica" not in record.extra


def test_prefill_pool_is_routed_and_decode_pool_balanced():
    requests = [Request(str(i), 0.0, 200, 20) for i in range(6)]
    records = list(simulate(requests, disagg=deployment(prefill=2, decode=3), router="round_robin"))
    assert sorted(r.replica for r in records) == [0, 0, 0, 1, 1, 1]
    assert sorted(r.extra["decode_replica"] for r in records) == [2, 2, 3, 3, 4, 4]
