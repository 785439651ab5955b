"""The `trtllm` and `sglang` policies against small hand-worked examples (LinearStepModel: every
iteration costs a fixed part plus a part per scheduled token, so each time below is worked out by
hand from the rules in the policy modules, sim/schedulers/trtllm.py and sim/schedulers/sglang.py)."""

import pytest

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.sim.schedulers.sglang import chunked_prefill_size, mem_fraction_static
from paretoserve.workload.request import Request

STEP = LinearStepModel(0.01, 1e-4)        # 10 ms + 0.1 ms per token
FLAT = LinearStepModel(0.01)              # 10 ms per iteration


def run(requests, policy, **kwargs):
    kwargs.setdefault("step_model", STEP)
    kwargs.setdefault("max_num_seqs", 8)
    return {r.request_id: r for r in simulate(requests, policy=policy, **kwargs)}


def test_trtllm_waits_until_prompt_plus_max_output_can_be_reserved():
    """10 blocks of 32 tokens. a (100 + 100 tokens) reserves ceil(199 / 32) = 7 blocks, so b
    (50 + 50: 4 blocks) is not admitted although its prompt fits now; it starts when a completes.
    a: whole prompt at 0 (10 + 10 ms), then 99 decodes of 10.1 ms: last token at 1.0199 s.
    vLLM on the same KV admits b with a in the first iteration (150 prompt tokens: 25 ms)."""
    requests = [Request("a", 0.0, 100, 100), Request("b", 0.0, 50, 50)]
    trt = run(requests, "trtllm", kv_tokens=320, block_size=32, prefix_caching=False)
    assert trt["a"].first_token_s == pytest.approx(0.02)
    assert trt["a"].last_token_s == pytest.approx(0.02 + 99 * 0.0101)
    assert trt["b"].scheduled_s == pytest.approx(trt["a"].last_token_s)
    assert trt["b"].first_token_s == pytest.approx(trt["a"].last_token_s + 0.01 + 50e-4)
    vllm = run(requests, "vllm", kv_tokens=320, block_size=32, prefix_caching=False)
    assert vllm["b"].first_token_s == pytest.approx(0.01 + 150e-4)


def test_trtllm_never_preempts_where_vllm_must():
    """Two requests of 64 + 200 tokens, 10 blocks of 32: each reserves ceil(263 / 32) = 9 blocks, so
    trtllm runs them one after the other with no preemption. vLLM admits both (2 blocks each); at
    18 blocks needed they cannot both grow, so it preempts the newest."""
    requests = [Request("a", 0.0, 64, 200), Request("b", 0.0, 64, 200)]
    trt = run(requests, "trtllm", kv_tokens=320, block_size=32, prefix_caching=False)
    assert trt["a"].preemptions == trt["b"].preemptions == 0
    assert trt["b"].scheduled_s == pytest.approx(trt["a"].last_token_s)
    vllm = run(requests, "vllm", kv_tokens=320, block_size=32, prefix_caching=False)
    assert vllm["b"].preemptions >= 1


@pytest.mark.parametrize("conservativeness,admitted_at_once", [(1.0, True), (2.0, False)])
def test_sglang_admits_by_its_new_token_ratio(conservativeness, admitted_at_once):
    """1150 one-token pages, radix cache on (the ratio-based estimate). a (100 + 500) prefills at
    0–10 ms and decodes every 10 ms; b (100 + 500) arrives at 45 ms and is considered at the 50 ms
    boundary, after G = 4 decode iterations: a holds 104 tokens, has 495 outputs left, so b fits when
    100 + 500 < 1150 − 104 − 495 × ratio.
    Conservativeness 1: ratio = 0.7 − 4 × (0.7 − 0.098) / 600 = 0.695987 → 701.5 > 600, admitted.
    Conservativeness 2: ratio = 1 − 4 × 0.86 / 600 = 0.994267 → 553.8 < 600: the batch is full and
    b waits for a to finish (a's last token at 10 ms + 499 × 10 ms = 5.0 s)."""
    requests = [Request("a", 0.0, 100, 500), Request("b", 0.045, 100, 500)]
    records = run(requests, "sglang", step_model=FLAT, kv_tokens=1150, block_size=1,
                  policy_options={"schedule_conservativeness": conservativeness})
    expected = 0.05 if admitted_at_once else records["a"].last_token_s
    assert records["a"].last_token_s == pytest.approx(0.01 + 499 * 0.01 + (0.01 if admitted_at_once else 0))
    assert records["b"].scheduled_s == pytest.approx(expected)


@pytest.mark.parametrize("kv_tokens,admitted_at_once", [(1250, True), (1150, False)])
def test_sglang_ignore_eos_checks_every_request_runs_to_completion(kv_tokens, admitted_at_once):
    """Radix cache off and ignore_eos: b (100 + 500) at the 50 ms boundary, a has 5 outputs (105
    tokens held, 104 in KV), 495 left. Ordered by outputs left: a first, with both still running
    the free KV after b's prompt must exceed 2 × 495 + 2 reserve: kv − 104 − 100 − 990 > 2, i.e.
    kv > 1196; then b alone: kv − 204 + 105 − 500 > 1. So 1250 admits b at once, 1150 does not."""
    requests = [Request("a", 0.0, 100, 500), Request("b", 0.045, 100, 500)]
    records = run(requests, "sglang", step_model=FLAT, kv_tokens=kv_tokens, block_size=1,
                  prefix_caching=False, policy_options={"ignore_eos": 1})
    expected = 0.05 if admitted_at_once else records["a"].last_token_s
    assert records["b"].scheduled_s == pytest.approx(expected)
    assert records["a"].preemptions == records["b"].preemptions == 0


@pytest.mark.parametrize("mixed", [False, True])
def test_sglang_prefill_batches_pause_decodes_unless_mixed(mixed):
    """a (100 + 10) decodes from 20 ms in 10.1 ms iterations; b (200 + 1) arrives at 45 ms and is
    prefilled at the 50.3 ms boundary (after 3 decodes). SGLang's default runs that prefill alone
    (10 + 20 ms) and a waits: a's last token at 20 + 9 × 10.1 + 30 ms = 140.9 ms. With mixed chunks
    a decodes in the same iteration (10 + 20.1 ms): 20 + 8 × 10.1 + 30.1 ms = 130.9 ms."""
    requests = [Request("a", 0.0, 100, 10), Request("b", 0.045, 200, 1)]
    records = run(requests, "sglang", kv_tokens=1 << 16, block_size=1,
                  policy_options={"mixed_chunk": float(mixed)})
    boundary = 0.02 + 3 * 0.0101
    if mixed:
        assert records["b"].first_token_s == pytest.approx(boundary + 0.01 + 201e-4)
        assert records["a"].last_token_s == pytest.approx(0.02 + 8 * 0.0101 + 0.0301)
    else:
        assert records["b"].first_token_s == pytest.approx(boundary + 0.01 + 200e-4)
        assert records["a"].last_token_s == pytest.approx(0.02 + 9 * 0.0101 + 0.03)


def test_sglang_chunked_prefill_and_max_prefill_tokens():
    """chunked_prefill_size 512: a's 1200-token prompt takes 512 + 512 + 176 (3 iterations); with
    max_prefill_tokens 300 only one 200-token prompt joins a batch (the second would exceed what
    is left), so c and d are prefilled in separate iterations."""
    a = run([Request("a", 0.0, 1200, 1)], "sglang", kv_tokens=1 << 16, block_size=1,
            policy_options={"chunked_prefill_size": 512})["a"]
    assert a.first_token_s == pytest.approx(3 * 0.01 + 1200e-4)
    records = run([Request("c", 0.0, 200, 1), Request("d", 0.0, 200, 1)], "sglang", kv_tokens=1 << 16,
                  block_size=1, policy_options={"max_prefill_tokens": 300})
    assert records["c"].first_token_s == pytest.approx(0.01 + 200e-4)
    assert records["d"].first_token_s == pytest.approx(2 * (0.01 + 200e-4))


def test_sglang_retracts_the_request_with_the_fewest_outputs():
    """470 pages, conservative estimate: a (100 + 150) decodes; b (100 + 150) is considered at the
    20 ms boundary (a holds 101 tokens, 148 outputs left): 250 < 470 − 101 − 0.7 × 148 = 265.4, so it
    is admitted, but both need 249 tokens at the end (498 > 470): when a decode finds no free page,
    b (fewer outputs) is retracted and recomputed later, never a."""
    requests = [Request("a", 0.0, 100, 150), Request("b", 0.015, 100, 150)]
    records = run(requests, "sglang", step_model=FLAT, kv_tokens=470, block_size=1, prefix_caching=False)
    assert records["a"].preemptions == 0 and records["b"].preemptions == 1
    assert records["b"].last_token_s > records["a"].last_token_s


def test_sglang_memory_defaults_on_an_h100():
    """H100 SXM (81,075 MiB): chunked_prefill_size 8192; mem_fraction_static at TP 2 is
    (81075 − (9.5 + 1) × 1024) / 81075 = 0.867 in v0.5.1; later releases reserve
    512 + 1.5 × 8192 + 2 × 256 (cuda_graph_max_bs at TP < 4) + 2 / 8 × 1024 = 13,568 MiB: 0.833."""
    memory = 85013299200
    assert chunked_prefill_size(memory) == 8192
    assert mem_fraction_static(memory, 2, 1, "0.5.1.post1") == pytest.approx(0.867, abs=5e-4)
    assert mem_fraction_static(memory, 2, 1, "0.5.8.post1") == pytest.approx((81075 - 13568) / 81075, abs=5e-4)


def test_trtllm_reserves_the_sliding_window_blocks_too():
    """10 blocks of 32 tokens; a KV layout whose sliding-window layers take as many bytes per token
    as the growing ones, capped at 2 blocks (KvLayout.fixed_blocks). Each request (20 + 45 tokens)
    starts on 1 + 1 blocks and ends holding ceil(64 / 32) = 2 growing blocks + min(2, 2) × 32 × 1 / 32
    = 2 window blocks = 4 blocks, so two fit in 10 and the third waits for the first to finish
    (counting only the 2 growing blocks would admit all three, and at 12 blocks the block manager
    would run out of its 10)."""
    from paretoserve.perf.memory import KvLayout

    layout = KvLayout(block_size=32, growing_bytes_per_token=1.0, window_bytes_per_token=1.0, window_blocks=2)
    requests = [Request(name, 0.0, 20, 45) for name in "abc"]
    trt = run(requests, "trtllm", kv_tokens=320, block_size=32, prefix_caching=False, kv_layout=layout)
    assert trt["a"].scheduled_s == trt["b"].scheduled_s == 0.0
    assert trt["c"].scheduled_s == pytest.approx(trt["a"].last_token_s)
    assert all(r.preemptions == 0 for r in trt.values())
