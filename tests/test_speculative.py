"""Speculative decoding (perf/speculative.py and the replica's verify steps) against hand calculations.

- LinearStepModel targets (step = base + per token × tokens + per context × Σ contexts) make every
  step time a hand sum: a verify of one sequence at context x costs base + (K + 1) per-token +
  per-context × (x + … + x + K), plus K drafter forwards.
- The expected acceptance length (1 − α^(K+1)) / (1 − α) is the geometric sum of the chain model.
- The datasheet roofline of Llama-3.1-8B on one H100 at batch 1 is weight-read bound: a verify of
  4 tokens reads the same 16 GB of weights as a decode of 1, so it costs only a few % more.
"""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.perf.constant import LinearStepModel
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import kv_capacity
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import StepShape
from paretoserve.perf.speculative import (
    AcceptanceSampler,
    SpecDecoder,
    Speculation,
    build_spec_decoder,
    expected_length,
    kv_tokens_with_drafter,
    verify_rows,
)
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

BASE, PER_TOKEN, PER_CONTEXT, DRAFT = 0.010, 1e-4, 1e-6, 5e-4
TARGET = LinearStepModel(BASE, PER_TOKEN, PER_CONTEXT)
DRAFTER = LinearStepModel(DRAFT)  # every drafter forward DRAFT seconds


def decoder(k: int, *, length: float | None = None, rate: float | None = None, seed: int = 0,
            target=TARGET, drafter=DRAFTER) -> SpecDecoder:
    spec = Speculation("eagle", k, acceptance_length=length, acceptance_rate=rate)
    return SpecDecoder(spec, target, drafter, draft_weight_bytes=0.0, draft_kv_bytes_per_token=0.0, seed=seed)


def one(request: Request, spec: SpecDecoder | None, model=TARGET, **kwargs):
    return next(iter(simulate([request], step_model=model, kv_tokens=1 << 20, speculative=spec, **kwargs)))


def test_verify_rows_are_k_plus_one_decode_rows_of_growing_context():
    """Hand: contexts (10, 20) at width 3 → rows 10, 11, 12, 20, 21, 22."""
    assert verify_rows((10, 20), 3) == (10, 11, 12, 20, 21, 22)
    assert verify_rows((10, 20), 1) == (10, 20)


@pytest.mark.parametrize("fast", [True, False])
def test_constant_acceptance_length_divides_tpot_by_the_verify_step_model(fast):
    """A = 3, K = 3, one request of prompt 100 and output 301: after the prefill token, 100 verify
    steps of 3 tokens each. Verify step i (0-based) has contexts 101 + 3i + j, j = 0..3:
    base + 4 per-token + per-context × (4 (101 + 3i) + 6) + 3 drafter forwards."""
    record = one(Request("a", 0.0, 100, 301), decoder(3, length=3.0), fast=fast)
    steps = [BASE + 4 * PER_TOKEN + PER_CONTEXT * (4 * (101 + 3 * i) + 6) + 3 * DRAFT for i in range(100)]
    assert record.tpot_s == pytest.approx(sum(steps) / 300, rel=1e-12)
    plain = one(Request("a", 0.0, 100, 301), None)
    plain_steps = [BASE + PER_TOKEN + PER_CONTEXT * (101 + i) for i in range(300)]
    assert plain.tpot_s == pytest.approx(sum(plain_steps) / 300, rel=1e-12)
    assert plain.tpot_s / record.tpot_s == pytest.approx(sum(plain_steps) / sum(steps), rel=1e-12)


def test_itl_gaps_follow_the_client_convention():
    """A step of d seconds that emits 3 tokens adds 3 gaps of d / 3; the last step of output 6
    (5 tokens after the first: steps of 3 and 2) adds 2 gaps of d / 2."""
    gaps: list[tuple[float, int]] = []
    sim = simulate([Request("a", 0.0, 100, 6)], step_model=TARGET, kv_tokens=1 << 20,
                   speculative=decoder(3, length=3.0), on_itl=lambda g, c: gaps.append((g, c)))
    record = next(iter(sim))
    d0 = BASE + 4 * PER_TOKEN + PER_CONTEXT * (4 * 101 + 6) + 3 * DRAFT
    d1 = BASE + 4 * PER_TOKEN + PER_CONTEXT * (4 * 104 + 6) + 3 * DRAFT
    assert gaps == [(pytest.approx(d0 / 3), 3), (pytest.approx(d1 / 2), 2)]
    assert record.e2e_s - record.ttft_s == pytest.approx(d0 + d1)


def test_zero_acceptance_is_plain_decoding_plus_the_verify_overhead():
    """α = 0: every step emits one token, so each of the 300 steps (contexts x = 101 … 400) costs the
    plain decode step plus K extra query rows — K per-token and per-context × (K x + 1 + … + K) —
    and K drafter forwards; on average over the steps x = 250.5."""
    k = 4
    spec_rec = one(Request("a", 0.0, 100, 301), decoder(k, rate=0.0))
    plain = one(Request("a", 0.0, 100, 301), None)
    overhead = k * PER_TOKEN + PER_CONTEXT * (k * 250.5 + k * (k + 1) / 2) + k * DRAFT
    # The prefill step also runs the drafter over the prompt (one forward) and drafts K tokens.
    assert spec_rec.ttft_s == pytest.approx(plain.ttft_s + (k + 1) * DRAFT)
    assert spec_rec.tpot_s - plain.tpot_s == pytest.approx(overhead, rel=1e-9)
    assert spec_rec.output_tokens == plain.output_tokens == 301


@pytest.mark.parametrize(("rate", "k"), [(0.6, 4), (0.8, 3), (0.3, 1)])
def test_expected_length_holds_under_seeded_sampling(rate, k):
    """Mean of 200,000 seeded draws within 1% of (1 − α^(K+1)) / (1 − α)."""
    sampler = AcceptanceSampler(Speculation("mtp", k, acceptance_rate=rate), seed=7)
    draws = [sampler.draw() for _ in range(200_000)]
    assert min(draws) == 1 and max(draws) == k + 1
    assert sum(draws) / len(draws) == pytest.approx((1 - rate ** (k + 1)) / (1 - rate), rel=0.01)
    assert expected_length(rate, k) == pytest.approx(sum(rate ** j for j in range(k + 1)))


def test_simulated_tokens_per_step_match_the_expected_length():
    """One request of 20,001 output tokens at α = 0.8, K = 3: output tokens after the first / verify
    steps within 1% of (1 − 0.8⁴) / 0.2 = 2.952."""
    rows = []
    sim = simulate([Request("a", 0.0, 10, 20_001)], step_model=TARGET, kv_tokens=1 << 20,
                   speculative=decoder(3, rate=0.8, seed=3), on_iteration=rows.append)
    next(iter(sim))
    verify_steps = sum(1 for r in rows if r.decode_seqs)
    assert 20_000 / verify_steps == pytest.approx(expected_length(0.8, 3), rel=0.01)


def test_fractional_acceptance_length_has_that_mean():
    """A = 2.3: draws are 2 or 3, mean 2.3 within 1% over 100,000 draws."""
    sampler = AcceptanceSampler(Speculation("mtp", 3, acceptance_length=2.3), seed=1)
    draws = [sampler.draw() for _ in range(100_000)]
    assert set(draws) == {2, 3}
    assert sum(draws) / len(draws) == pytest.approx(2.3, rel=0.01)


def test_same_seed_same_run_other_seed_other_run():
    """Acceptance is sampled with the run's seed: deterministic, and it depends on the seed."""
    req = Request("a", 0.0, 50, 400)
    a = one(req, decoder(3, rate=0.7, seed=1)).e2e_s
    assert one(req, decoder(3, rate=0.7, seed=1)).e2e_s == a
    assert one(req, decoder(3, rate=0.7, seed=2)).e2e_s != a


@pytest.mark.parametrize("fast", [True, False])
def test_kv_pressure_preempts_and_every_block_comes_back(fast):
    """40 requests on 2,048 KV tokens with A = 3.5: preemptions happen, every request completes
    with its output, and at the end no block is held."""
    requests = [Request(f"r{i}", 0.01 * i, 200, 300 + 7 * i) for i in range(40)]
    sim = simulate(requests, step_model=TARGET, kv_tokens=2048, speculative=decoder(4, length=3.5), fast=fast)
    records = {r.request_id: r for r in sim}
    assert len(records) == 40 and all(records[f"r{i}"].output_tokens == 300 + 7 * i for i in range(40))
    assert sim.stats.preemptions > 0
    kv = sim.replicas[0].kv
    assert kv.used == 0 and kv.free == kv.num_blocks


def test_decode_bound_roofline_speedup_is_a_times_decode_over_verify():
    """Llama-3.1-8B, 1× H100, batch 1 (weight-bound): the verify of 4 tokens costs less than 5%
    more than a decode (the same weights are read once), and the simulated TPOT ratio equals
    A × decode / (verify + drafting) at the mean context to within 1%."""
    model, device = load_model("Meta-Llama-3.1-8B"), load_device("h100_sxm")
    target = Roofline(model, device)
    spec = Speculation("eagle", 3, acceptance_length=3.0)
    dec = build_spec_decoder(spec, model, device, target, ParallelLayout())
    ctx = 1024 + 256
    decode = target.seconds(StepShape(decode=(ctx,)))
    verify = target.seconds(StepShape(decode=verify_rows((ctx,), 4)))
    assert verify / decode < 1.05
    predicted = 3.0 * decode / dec.seconds((), (ctx,))
    req = Request("a", 0.0, 1024, 513)
    plain, fast = one(req, None, model=target), one(req, dec, model=target)
    assert plain.tpot_s / fast.tpot_s == pytest.approx(predicted, rel=0.01)


def test_drafter_weights_and_kv_shrink_the_kv_cache():
    """EAGLE head on Llama-3.1-8B: one decoder layer of weights (q, o 4096²; k, v 4096 × 1024;
    gate, up, down 4096 × 14336; two norms: 218.1 M params, 436 MB in bf16) and 1/32 of the
    target's KV per token; the KV budget loses those weights and every block grows by 1/32."""
    model, device = load_model("Meta-Llama-3.1-8B"), load_device("h100_sxm")
    dec = build_spec_decoder(Speculation("eagle", 3, acceptance_length=2.0), model, device,
                             Roofline(model, device), ParallelLayout())
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert dec.draft_weight_bytes == pytest.approx(2 * layer, rel=1e-3)
    kv = kv_capacity(model, device)
    assert dec.draft_kv_bytes_per_token == pytest.approx(kv.bytes_per_token / 32)
    blocks = (kv.bytes - dec.draft_weight_bytes) // (16 * kv.bytes_per_token * 33 / 32)
    assert kv_tokens_with_drafter(kv, dec) == pytest.approx(16 * blocks, abs=16)


@pytest.mark.parametrize(("args", "message"), [
    (("eagle", 0, 2.0, None), "must be >= 1"),
    (("eagle", 3, None, 1.0), "must be in [0, 1)"),
    (("eagle", 3, None, -0.1), "must be in [0, 1)"),
    (("eagle", 3, 4.5, None), "must be in [1, K + 1 = 4]"),
    (("eagle", 3, 2.0, 0.5), "exactly one of"),
    (("eagle", 3, None, None), "exactly one of"),
    (("medusa", 3, 2.0, None), "expected mtp, eagle or draft:MODEL"),
    (("draft", 3, 2.0, None), "expected mtp, eagle or draft:MODEL"),
])
def test_bad_settings_are_one_line_user_errors(args, message):
    with pytest.raises(UserError, match=r"^[^\n]*$") as info:
        Speculation.parse(*args)
    assert message in str(info.value)


SIM = ["simulate", "-m", "Meta-Llama-3.1-8B", "-H", "h100_sxm", "--arrival", "poisson", "--rate", "2",
       "--requests", "3", "--prompt", "64", "--output", "16", "--num-speculative-tokens", "3",
       "--acceptance-length", "2"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--speculative", "draft:no-such-model"], "no-such-model"),
    (["--speculative", "draft:Qwen3-0.6B"], "must share the target's tokenizer"),
    (["--speculative", "eagle", "--pp", "2"], "pipeline parallelism"),
    (["--speculative", "eagle", "--acceptance-rate", "0.5"], "exactly one of"),
])
def test_cli_bad_speculation_is_one_error_line(tmp_path, extra, message):
    result = CliRunner().invoke(app, SIM + extra + ["--out", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_simulate_and_estimate_with_a_draft_model(tmp_path):
    """draft:Meta-Llama-3.1-8B for Llama-3.1-70B on 4× H100: the run records the drafter, and
    estimate prints the verify step."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "-m", "Meta-Llama-3.1-70B", "-H", "h100_sxm", "--tp", "4",
                                      "--arrival", "poisson", "--rate", "1", "--requests", "4",
                                      "--prompt", "256", "--output", "64",
                                      "--speculative", "draft:Meta-Llama-3.1-8B", "--num-speculative-tokens", "4",
                                      "--acceptance-rate", "0.7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = (out / "config.yaml").read_text()
    assert "drafter: Meta-Llama-3.1-8B" in config and "verify_width: 5" in config
    result = CliRunner().invoke(app, ["estimate", "-m", "Meta-Llama-3.1-8B", "-H", "h100_sxm",
                                      "--speculative", "mtp", "--num-speculative-tokens", "2",
                                      "--acceptance-length", "2.5", "--json"])
    assert result.exit_code == 0, result.output
    assert '"verify_tokens_per_s"' in result.output and '"speculative_speedup"' in result.output
    assert not math.isnan(float(result.output.split('"speculative_speedup": ')[1].split("\n")[0].strip(",")))
