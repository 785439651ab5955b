"""Speculative decoding: the verify step, the drafter's cost and memory, and the acceptance model.

Each engine step of a speculating replica (vLLM V1 / SGLang EAGLE with chain drafts, top-k 1):

- **verify** on the target model: every decoding sequence of context x feeds K + 1 query tokens
  (the last sampled token and the K drafted ones), priced as K + 1 decode rows of contexts
  x, x + 1, …, x + K (`verify_rows`). Through the step model's aggregates that is: K + 1 tokens
  through the linear layers and the LM head (FLOPs and activations K + 1 times), K + 1 query rows
  attending the context (attention FLOPs and KV reads K + 1 times), while each weight matrix is
  read once and each all-reduce sent once per step — the convention of the peers that model
  speculation (the issue's "verify of width K + 1"). Real kernels read a sequence's KV once for
  its K + 1 rows, so the KV-read term is an upper bound that matters only at long contexts.
  Recurrent (Mamba) state is counted per row too.
- **drafting**: K successive forwards of the drafter on every sampling sequence (each of width 1,
  contexts growing by one), plus the drafter's pass over any prompt tokens computed in the step.
  A catalog draft model (`draft:MODEL`) is priced as that whole model; MTP and EAGLE heads as one
  extra decoder layer of the target (its last layer's kind) plus the embedding and LM head it
  shares with the target — DeepSeek-V3's MTP module is one transformer block on the shared head
  (engine_facts.md §6 item 2), and vLLM/SGLang run the EAGLE head once per drafted token
  (§4 "Speculative decoding": with top-k 1, draft tokens = steps + 1). The drafter's forwards run
  inside the engine step, so they carry no per-step CPU overhead of their own. EAGLE-3 heads have
  their own LM head over a reduced draft vocabulary (32K), so pricing the target's full LM head
  overstates their cost somewhat.
- **memory**: the drafter's weights (draft model: all of them; heads: one decoder layer — embedding
  and head are shared) come out of the KV budget, and every token of context holds the drafter's
  KV as well as the target's (`kv_tokens_with_drafter`).
- **progress**: a step emits accepted + 1 tokens per sequence, 1 ≤ tokens ≤ K + 1
  (`AcceptanceSampler`). The acceptance is a workload input, never predicted: a mean acceptance
  length A (vLLM's "1 + accepted / drafts", engine_facts.md §3 "Speculative-decoding metrics"),
  realised as ⌊A⌋ or ⌊A⌋ + 1 tokens with the probability that gives mean A (constant when A is an
  integer); or a per-position acceptance rate α, each drafted token accepted with probability α
  while the previous ones were, expected length (1 − α^(K+1)) / (1 − α) (`expected_length`).

Units: seconds, tokens, bytes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.model import ModelSpec, load_model
from paretoserve.errors import UserError
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import KvCapacity, kv_layout, weight_bytes_per_device
from paretoserve.perf.roofline import Efficiency, Roofline
from paretoserve.perf.shape import OpTime, PrefillChunk, StepShape, StepTime

METHODS = ("mtp", "eagle", "draft")


def expected_length(rate: float, k: int) -> float:
    """Mean tokens per verify step when each of `k` drafted tokens is accepted with probability
    `rate` given the previous ones were: Σ_{j=0}^{k} rate^j = (1 − rate^(k+1)) / (1 − rate)."""
    if rate >= 1.0:
        return k + 1.0
    return (1.0 - rate ** (k + 1)) / (1.0 - rate)


@dataclass(frozen=True)
class Speculation:
    """The user's speculative-decoding settings (validated by `Speculation.parse`).

    Attributes:
        method: "mtp", "eagle" or "draft".
        k: drafted tokens per step (`--num-speculative-tokens`).
        draft_model: catalog name or config path of the draft model (method "draft" only).
        acceptance_length: mean tokens emitted per verify step, accepted + 1, in [1, k + 1].
        acceptance_rate: per-position acceptance probability in [0, 1).
    """

    method: str
    k: int
    draft_model: str | None = None
    acceptance_length: float | None = None
    acceptance_rate: float | None = None

    @classmethod
    def parse(cls, text: str, k: int | None, acceptance_length: float | None = None,
              acceptance_rate: float | None = None) -> Speculation:
        """From `--speculative mtp|eagle|draft:MODEL` and its companions; UserError on bad input."""
        method, _, draft = text.strip().partition(":")
        method = method.strip().lower()
        if method not in METHODS or (method == "draft") != bool(draft.strip()):
            raise UserError(f"--speculative {text!r}: expected mtp, eagle or draft:MODEL", field="speculative")
        if k is None or k < 1:
            raise UserError(f"--num-speculative-tokens must be >= 1, got {k}", field="num_speculative_tokens")
        if (acceptance_length is None) == (acceptance_rate is None):
            raise UserError("speculative decoding needs exactly one of --acceptance-length and "
                            "--acceptance-rate", field="acceptance_length")
        if acceptance_length is not None and not 1.0 <= acceptance_length <= k + 1:
            raise UserError(f"--acceptance-length {acceptance_length:g} must be in [1, K + 1 = {k + 1}] "
                            "(tokens per verify step, the bonus token included)", field="acceptance_length")
        if acceptance_rate is not None and not 0.0 <= acceptance_rate < 1.0:
            raise UserError(f"--acceptance-rate {acceptance_rate:g} must be in [0, 1)", field="acceptance_rate")
        return cls(method, k, draft.strip() or None, acceptance_length, acceptance_rate)

    @property
    def width(self) -> int:
        """Query tokens per decoding sequence in a verify step: K + 1."""
        return self.k + 1

    @property
    def mean_tokens(self) -> float:
        """Expected tokens emitted per sequence per verify step."""
        if self.acceptance_length is not None:
            return self.acceptance_length
        assert self.acceptance_rate is not None
        return expected_length(self.acceptance_rate, self.k)

    def describe(self) -> str:
        """e.g. 'eagle K=3, acceptance length 2.5'."""
        name = f"draft:{self.draft_model}" if self.method == "draft" else self.method
        accept = (f"acceptance length {self.acceptance_length:g}" if self.acceptance_length is not None
                  else f"acceptance rate {self.acceptance_rate:g} (length {self.mean_tokens:.3g})")
        return f"{name} K={self.k}, {accept}"


class AcceptanceSampler:
    """Tokens emitted per verify step (accepted + 1), drawn from a seeded `random.Random`."""

    __slots__ = ("k", "rate", "floor", "frac", "rng")

    def __init__(self, spec: Speculation, seed: int) -> None:
        self.k = spec.k
        self.rate = spec.acceptance_rate
        length = spec.acceptance_length or 1.0
        self.floor = int(math.floor(length))
        self.frac = length - self.floor
        self.rng = random.Random(seed)

    def draw(self) -> int:
        """One step's tokens per sequence, in [1, K + 1]."""
        if self.rate is None:
            if self.frac and self.rng.random() < self.frac:
                return self.floor + 1
            return self.floor
        tokens, rng, rate = 1, self.rng, self.rate
        while tokens <= self.k and rng.random() < rate:
            tokens += 1
        return tokens


def verify_rows(contexts: tuple[int, ...], width: int) -> tuple[int, ...]:
    """Decode rows of a verify step: each context x (the first new token included) becomes
    `width` rows of contexts x, x + 1, …, x + width − 1."""
    if width == 1:
        return contexts
    return tuple(x + j for x in contexts for j in range(width))


class SpecDecoder:
    """Step time of a speculating replica: verify on `target` plus K drafter forwards.

    Args:
        spec: the settings.
        target: the target model's step model.
        drafter: the drafter's step model (no per-step overhead of its own).
        draft_weight_bytes: drafter weights held by each device.
        draft_kv_bytes_per_token: drafter KV per token of context, per device.
        seed: seed of the acceptance sampling (replica i draws from seed × 1000003 + i).
        draft_name: the drafter's name, for reports.
    """

    def __init__(self, spec: Speculation, target: StepTimeModel, drafter: StepTimeModel, *,
                 draft_weight_bytes: float, draft_kv_bytes_per_token: float, seed: int = 0,
                 draft_name: str = "drafter") -> None:
        self.spec = spec
        self.target = target
        self.drafter = drafter
        self.width = spec.width
        self.draft_weight_bytes = draft_weight_bytes
        self.draft_kv_bytes_per_token = draft_kv_bytes_per_token
        self.seed = seed
        self.draft_name = draft_name

    def sampler(self, replica: int) -> AcceptanceSampler:
        """The acceptance sampler of replica number `replica`."""
        return AcceptanceSampler(self.spec, self.seed * 1_000_003 + replica)

    def seconds(self, prefill: tuple[PrefillChunk, ...], contexts: tuple[int, ...]) -> float:
        """Seconds of one step: prompt chunks `prefill` and decoding sequences of `contexts`
        (context + 1 each, as `StepShape.decode`), verified K + 1 wide and drafted K deep."""
        verify = self.target.seconds(StepShape(prefill, verify_rows(contexts, self.width)))
        return verify + self.draft_seconds(prefill, contexts)

    def draft_seconds(self, prefill: tuple[PrefillChunk, ...], contexts: tuple[int, ...]) -> float:
        """The drafter's seconds in one step: its pass over the prompt chunks, then K forwards of
        every sequence that samples (decodes and completed prompts), contexts growing by one."""
        total = self.drafter.seconds(StepShape(prefill)) if prefill else 0.0
        n = len(contexts) + sum(1 for c in prefill if c.last)
        if n:
            context_sum = sum(contexts) + sum(c.context + c.tokens + 1 for c in prefill if c.last)
            total += self.drafter.decode_run_seconds(n, context_sum, self.spec.k)
        return total

    def step_time(self, prefill: tuple[PrefillChunk, ...], contexts: tuple[int, ...]) -> StepTime:
        """`seconds` with the verify's per-operator breakdown and the drafter as one "draft" row
        (its FLOPs and bytes: K forwards at the step's contexts, the prompt pass left out; its bound:
        that of the drafter's longest operator)."""
        verify = self.target.step_time(StepShape(prefill, verify_rows(contexts, self.width)))
        draft = self.draft_seconds(prefill, contexts)
        one = self.drafter.step_time(StepShape(decode=contexts)) if contexts else StepTime(0.0)
        bound = max(one.ops, key=lambda op: op.seconds).bound if one.ops else "memory"
        k = self.spec.k
        row = OpTime(f"draft.{self.spec.method} x{k}", draft, k * one.flops, k * one.bytes, bound)
        return StepTime(verify.seconds + draft, verify.ops + (row,))


def head_model(target: ModelSpec, method: str) -> ModelSpec:
    """An MTP / EAGLE head as a model: one decoder layer of the target's last layer kind, with the
    target's embedding and LM head."""
    return replace(target, name=f"{target.name}-{method}-head", layers=target.layers[-1:])


def draft_model_for(spec: Speculation, target: ModelSpec) -> ModelSpec:
    """The drafter's architecture; UserError for a draft model of another vocabulary."""
    if spec.method != "draft":
        return head_model(target, spec.method)
    assert spec.draft_model is not None
    draft = load_model(spec.draft_model)
    if draft.vocab_size != target.vocab_size:
        raise UserError(f"draft model {draft.name} has a vocabulary of {draft.vocab_size:,} tokens, "
                        f"{target.name} {target.vocab_size:,}; a draft model must share the target's "
                        "tokenizer", field="speculative")
    return draft


def build_spec_decoder(spec: Speculation, target: ModelSpec, device: DeviceSpec, target_step: StepTimeModel,
                       layout: ParallelLayout, *, weight_dtype: str | None = None,
                       kv_dtype: str | None = None, block_size: int = 16, seed: int = 0) -> SpecDecoder:
    """The `SpecDecoder` of one replica: the drafter on the replica's attention-TP devices
    (datasheet roofline with the target's efficiencies when the target is a roofline), in its own
    checkpoint dtype (draft model) or the target's `weight_dtype` (heads)."""
    if layout.pp > 1:
        raise UserError("speculative decoding with pipeline parallelism (--pp > 1) is not modelled",
                        field="speculative")
    draft = draft_model_for(spec, target)
    if spec.method == "draft":
        draft_layout = ParallelLayout(tp=layout.tp)
        weight_dtype = None
    else:
        draft_layout = replace(layout, pp=1)
    eff = target_step.eff if isinstance(target_step, Roofline) else Efficiency()
    drafter = Roofline(draft, device, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                       efficiency=replace(eff, step_overhead_s=0.0), layout=draft_layout)
    weights = weight_bytes_per_device(draft, weight_dtype, draft_layout)
    if spec.method != "draft":  # embedding and LM head are the target's
        weights -= weight_bytes_per_device(replace(draft, layers=()), weight_dtype, draft_layout)
    cache = kv_layout(draft, draft_layout.tp, 1, kv_dtype, block_size)
    return SpecDecoder(spec, target_step, drafter, draft_weight_bytes=weights,
                       draft_kv_bytes_per_token=cache.growing_bytes_per_token + cache.window_bytes_per_token,
                       seed=seed, draft_name=draft.name)


def kv_tokens_with_drafter(kv: KvCapacity, decoder: SpecDecoder) -> int:
    """KV tokens of a replica once the drafter's weights are loaded and every token also holds the
    drafter's KV: free bytes per device minus the drafter's weights, over the target's plus the
    drafter's bytes per block, in whole blocks. UserError when nothing is left."""
    free = kv.bytes / kv.devices - decoder.draft_weight_bytes
    block = kv.layout.block_bytes + kv.layout.block_size * decoder.draft_kv_bytes_per_token
    blocks = int(free // block) if free > 0 else 0
    if blocks < 1:
        raise UserError(f"the drafter's weights ({decoder.draft_weight_bytes / 1e9:.1f} GB per device) "
                        "leave no room for the KV cache", field="speculative")
    return blocks * kv.layout.block_size
