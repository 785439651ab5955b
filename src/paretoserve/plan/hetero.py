"""Heterogeneous replicas as plan options: LLM pipeline stages on different device types inside one
replica, and attention offload (attention + KV on one device type, every other operator on another).

The simulator runs one device type per replica, so these candidates are not simulated: they are
priced by the partitioner's stage model (`plan.partition_llm.llm_chain` through
`plan.partition.evaluate_partitions` for a pipeline, `plan.partition_llm.attention_offload`), and
their rows say "analytic stage model, not simulated". A replica of S devices (S stages; 2 for an
offload) keeps S micro-batches in flight, as vLLM's pipeline parallelism does. From the trace's mean
prompt P, mean output O and 90th-percentile prompt P90, and the engine's `max_num_seqs` B and
`max_num_batched_tokens` C, at full load (the steady state the capacity search of a simulated plan
probes):

- a micro-batch step decodes b = ⌈B / S⌉ sequences at the mean context P + O / 2 and, as chunked
  prefill does, computes p = min(⌈b·P / O⌉, C − b) prompt tokens of arriving requests (the prompt
  work that keeps the batch full); its period T is the pipelined period of that step (1 / slowest
  stage or transfer, `plan.partition.evaluate_partitions` / `sim.dnn_pipeline.loop_period`);
- capacity (requests/s) = min(b / O, p / P) / T;
- TPOT = S × T (each of the S micro-batches gets one token per round);
- TTFT = latency (Σ stages + transfers) of the prefill of one P90-token prompt, at no load (a lower
  bound: queueing is not modelled); E2E = TTFT + (O − 1) × TPOT;
- joules per request = O / b × joules of one micro-batch step (each device's busy and idle power).

The pipeline's cut is the one with the highest capacity among the cuts whose every stage holds its
weights and the KV cache of its layers for B sequences at the mean context within
`gpu_memory_utilization` of its memory; an offload holds all weights on the dense device and the KV
of B sequences on the attention device. The link between devices is the space's `hetero_link` (any
`catalog.links.load_link` spec), else the slower device's inter-node bandwidth and latency.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.links import LinkProfile, load_link
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.metrics.slo import Slo
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import kv_layout, weight_bytes_per_device
from paretoserve.plan.partition import Partition, evaluate_partitions
from paretoserve.plan.partition_llm import attention_offload, llm_chain
from paretoserve.plan.rows import figures_row
from paretoserve.plan.space import SearchSpace
from paretoserve.workload.request import Request

#: What every heterogeneous row says about how it was evaluated (its `evaluation`).
ANALYTIC = "analytic stage model, not simulated"
#: The plan output's note on those rows.
ANALYTIC_NOTE = ("partitioner's stage model (plan.partition_llm: full-load micro-batch step, no queueing, no "
                 "prefix caching), not simulated — the simulator runs one device type per replica — and are "
                 "never recommended")
PIPELINE, OFFLOAD = "hetero_pp", "attention_offload"


@dataclass(frozen=True, slots=True)
class HeteroPlan:
    """`replicas` replicas of one heterogeneous chain: `chain` lists the device of each pipeline
    stage in order, or (dense device, attention device) for an attention offload."""

    kind: str
    chain: tuple[str, ...]
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    replicas: int = 1

    @property
    def devices(self) -> int:
        """Devices the whole plan uses."""
        return self.replicas * len(self.chain)

    @property
    def usd_per_hour(self) -> float:
        """List price of all the plan's devices, USD per hour."""
        return self.replicas * sum(load_device(name).price_per_hour for name in self.chain)

    @property
    def device_label(self) -> str:
        """'h100_sxm+l40s': the chain's devices in order (the plan's device type)."""
        return "+".join(self.chain)

    @property
    def label(self) -> str:
        """e.g. '2×h100_sxm+l40s pp2 dp1 seqs256 mbt8192 analytic'."""
        shape = (f"pp{len(self.chain)}" if self.kind == PIPELINE
                 else f"attention+KV on {self.chain[1]}")
        extras = [f"seqs{self.max_num_seqs}", f"mbt{self.max_num_batched_tokens}"]
        extras += [f"w{self.weight_dtype}"] if self.weight_dtype != "bf16" else []
        extras += [f"kv{self.kv_dtype}"] if self.kv_dtype != "bf16" else []
        return f"{self.devices}×{self.device_label} {shape} dp{self.replicas} " + " ".join(extras) + " analytic"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready description (plans.jsonl's `plan` field; `device` is the chain's label)."""
        return {"kind": self.kind, "chain": list(self.chain), "device": self.device_label, "tp": 1,
                "pp": len(self.chain) if self.kind == PIPELINE else 1, "dp_attention": 1, "ep": 1,
                "max_num_seqs": self.max_num_seqs, "max_num_batched_tokens": self.max_num_batched_tokens,
                "weight_dtype": self.weight_dtype, "kv_dtype": self.kv_dtype, "policy": "vllm",
                "dp": self.replicas, "router": "round_robin", "disagg": None}


@dataclass(frozen=True, slots=True)
class HeteroFigures:
    """One replica's figures by the stage model (module docstring): requests/s, seconds, joules per
    request, tokens per request; the micro-batch step's decode sequences, prompt tokens and context;
    `split` names the pipeline cut(s), `stage_s`/`transfer_s` that step's seconds per stage and per
    transfer; `reason` says why it cannot serve (capacity 0)."""

    capacity_rps: float
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    joules_per_request: float
    input_tokens_per_request: float
    output_tokens_per_request: float
    decode_batch: int
    prompt_tokens_per_step: int
    context_tokens: int
    split: str = ""
    stage_s: tuple[float, ...] = ()
    transfer_s: tuple[float, ...] = ()
    reason: str = ""

    @property
    def latency_key(self) -> float:
        """TPOT, for breaking capacity ties between cuts (infinite when the replica cannot serve)."""
        return math.inf if self.tpot_s is None else self.tpot_s


def hetero_candidates(chains: list[list[str]], offloads: list[list[str]], max_num_seqs: list[int],
                      max_num_batched_tokens: list[int], weight_dtypes: list[str],
                      kv_dtypes: list[str]) -> list[HeteroPlan]:
    """One-replica candidates: every pipeline chain and offload pair with every engine setting."""
    plans = []
    for kind, groups in ((PIPELINE, chains), (OFFLOAD, offloads)):
        for group in groups:
            names = tuple(load_device(name).name for name in group)
            for seqs, mbt, wdt, kdt in itertools.product(max_num_seqs, max_num_batched_tokens, weight_dtypes,
                                                         kv_dtypes):
                plans.append(HeteroPlan(kind, names, seqs, mbt, wdt, kdt))
    return plans


def default_link(devices: list[DeviceSpec]) -> str:
    """The link spec between the devices of a chain: the lowest inter-node bandwidth and the highest
    inter-node latency of its devices (a `load_link` constant, e.g. '50GB/s@5us')."""
    bandwidth = min(d.inter_node_bandwidth for d in devices)
    latency = max(d.inter_node_latency for d in devices)
    return f"{bandwidth / 1e9:.6g}GB/s@{latency * 1e6:.6g}us"


def link_spec(plan: HeteroPlan, hetero_link: str | None) -> str:
    """The link spec a plan's devices are joined by (`hetero_link`, else `default_link`)."""
    return hetero_link or default_link([load_device(name) for name in plan.chain])


def evaluate_hetero(plan: HeteroPlan, model: ModelSpec, requests: list[Request], *, link: LinkProfile,
                    gpu_memory_utilization: float = 0.9) -> HeteroFigures:
    """The figures of one replica of `plan` serving `requests`' mix (module docstring); UserError when
    the stage model cannot split `model` (several layer kinds; offload without GQA attention)."""
    prompts = np.array([r.prompt_tokens for r in requests], dtype=float)
    outputs = np.array([r.output_tokens for r in requests], dtype=float)
    mean_prompt, mean_output = float(prompts.mean()), max(1.0, float(outputs.mean()))
    long_prompt = max(1, math.ceil(float(np.percentile(prompts, 90))))
    context = max(1, int(mean_prompt + mean_output / 2))
    stages = len(plan.chain)
    batch = math.ceil(plan.max_num_seqs / stages)
    prompt_share = max(0, min(math.ceil(batch * mean_prompt / mean_output), plan.max_num_batched_tokens - batch))
    devices = [load_device(name) for name in plan.chain]
    layout = kv_layout(model, 1, 1, plan.kv_dtype)
    kv_per_token_layer = (layout.growing_bytes_per_token + layout.window_bytes_per_token) / model.num_layers
    kv_tokens = plan.max_num_seqs * context  # KV the replica holds at full batch
    base = {"input_tokens_per_request": mean_prompt, "output_tokens_per_request": mean_output,
            "decode_batch": batch, "prompt_tokens_per_step": prompt_share, "context_tokens": context}
    steps = (("decode", batch, context, prompt_share), ("prefill", 1, long_prompt, 0))
    if plan.kind == OFFLOAD:
        dense, attention = devices
        step, first = (attention_offload(model, dense, attention, link, phase=phase, sequences=n, tokens=t,
                                         prefill_tokens=pt, in_flight=stages, weight_dtype=plan.weight_dtype)
                       for phase, n, t, pt in steps)
        weights = weight_bytes_per_device(model, plan.weight_dtype, ParallelLayout())
        if weights > gpu_memory_utilization * dense.mem_capacity:
            return HeteroFigures(0.0, None, None, None, 0.0, **base, reason=f"the weights do not fit on {dense.name}")
        if kv_tokens * kv_per_token_layer * model.num_layers > gpu_memory_utilization * attention.mem_capacity:
            return HeteroFigures(0.0, None, None, None, 0.0, **base, reason=f"the KV cache of {plan.max_num_seqs} "
                                 f"sequences does not fit on {attention.name}")
        return _figures(step, first, stages, base, split="")
    chains = [llm_chain(model, phase=phase, sequences=n, tokens=t, prefill_tokens=pt, weight_dtype=plan.weight_dtype)
              for phase, n, t, pt in steps]
    links = [link] * (stages - 1)
    mixed, prefill = (evaluate_partitions(c, devices, links, in_flight=stages, fixed_order=True) for c in chains)
    params = np.concatenate([[0.0], np.cumsum(chains[0].param_bytes)])
    best: HeteroFigures | None = None
    for step, first in zip(mixed, prefill, strict=True):
        bounds = [0, *(p.index for p in step.splits), chains[0].units]
        fits = step.feasible and first.feasible and all(
            params[hi] - params[lo] + kv_tokens * kv_per_token_layer * _layers(lo, hi, model.num_layers)
            <= gpu_memory_utilization * device.mem_capacity
            for lo, hi, device in zip(bounds, bounds[1:], devices, strict=False))
        if fits:
            figures = _figures(step, first, stages, base, split=" ".join(f"@{p.block}" for p in step.splits))
            if best is None or (figures.capacity_rps, -figures.latency_key) > (best.capacity_rps, -best.latency_key):
                best = figures
    if best is None:
        return HeteroFigures(0.0, None, None, None, 0.0, **base, reason="no cut lets every stage hold its weights "
                             f"and the KV cache of {plan.max_num_seqs} sequences")
    return best


def _figures(step: Partition, first: Partition, stages: int, base: dict[str, float], split: str) -> HeteroFigures:
    """Serving figures from the full-load micro-batch step and the P90 prompt's prefill (module docstring)."""
    batch, share = int(base["decode_batch"]), int(base["prompt_tokens_per_step"])
    prompt, output = float(base["input_tokens_per_request"]), float(base["output_tokens_per_request"])
    period = batch / step.throughput_pipelined  # seconds per micro-batch step (the chain's samples are b sequences)
    requests_per_step = min(batch / output, share / prompt if prompt else math.inf)
    tpot = stages * period
    ttft = first.latency_s
    reason = "" if requests_per_step > 0 else "max_num_batched_tokens leaves no room for prompt tokens"
    return HeteroFigures(requests_per_step / period, ttft, tpot, ttft + (output - 1.0) * tpot,
                         output * step.energy_j_pipelined, **base, split=split, stage_s=step.stage_s,
                         transfer_s=step.transfer_s, reason=reason)


def _layers(lo: int, hi: int, layers: int) -> int:
    """Decoder layers among chain units [lo, hi) (unit 0 is the embedding, unit layers + 1 the LM head)."""
    return max(0, min(hi, layers + 1) - max(lo, 1))


def hetero_rows(space: SearchSpace, model: ModelSpec, requests: list[Request], slo: Slo, rate: float | None,
                notes: list[str]) -> list[dict[str, object]]:
    """Rows of the space's heterogeneous candidates (`hetero_stages`, `attention_offload`): one replica
    each, or in fixed-rate mode the replicas that serve `rate`; a candidate whose stage-model TTFT,
    TPOT or E2E misses `slo`'s threshold has capacity 0. Candidates over the budget are left out and
    the stage model's refusals (e.g. a model with several layer kinds) are added to `notes`."""
    plans = hetero_candidates(space.hetero_stages, space.attention_offload, space.max_num_seqs,
                              space.max_num_batched_tokens, space.weight_dtypes, space.kv_dtypes)
    if not plans:
        return []
    notes.append(f"heterogeneous candidates ('analytic' plans) are priced by the {ANALYTIC_NOTE}")
    rows = []
    for plan in plans:
        link = link_spec(plan, space.hetero_link)
        try:
            figures = evaluate_hetero(plan, model, requests, link=load_link(link),
                                      gpu_memory_utilization=space.gpu_memory_utilization)
        except UserError as exc:
            note = f"{plan.kind} {plan.device_label} not evaluated: {exc}"
            if note not in notes:
                notes.append(note)
            continue
        values = {"ttft": figures.ttft_s, "tpot": figures.tpot_s, "e2e": figures.e2e_s}
        meets = all(limit is None or values[m] is None or values[m] <= limit  # type: ignore[operator]
                    for m in values if (limit := slo.threshold_s(m)) is not None)
        per_replica = figures.capacity_rps if meets else 0.0
        if rate is not None and per_replica > 0:
            plan = replace(plan, replicas=math.ceil(rate / per_replica))
        usd_per_hour = plan.usd_per_hour
        if plan.devices > space.max_devices or (space.max_usd_per_hour is not None
                                                and usd_per_hour > space.max_usd_per_hour):
            continue
        if rate is not None and per_replica <= 0:
            continue
        capacity = per_replica * plan.replicas
        served = capacity if rate is None else min(capacity, rate)
        described = {**plan.to_dict(), "split": figures.split, "link": link, "decode_batch": figures.decode_batch,
                     "prompt_tokens_per_step": figures.prompt_tokens_per_step,
                     "context_tokens": figures.context_tokens, "stage_s": list(figures.stage_s),
                     "transfer_s": list(figures.transfer_s),
                     "stage_model_reason": figures.reason or (None if meets else "misses the SLO")}
        command = (f"analytic ({ANALYTIC}): plan.hetero.evaluate_hetero — micro-batch of {figures.decode_batch} "
                   f"decodes at context {figures.context_tokens} + {figures.prompt_tokens_per_step} prompt tokens, "
                   f"{len(plan.chain)} in flight, link {link}")
        rows.append(figures_row(described, plan.label, plan.devices, usd_per_hour, capacity, served,
                                (figures.ttft_s, figures.tpot_s, figures.e2e_s), figures.joules_per_request,
                                (figures.input_tokens_per_request, figures.output_tokens_per_request), None,
                                command, evaluation=ANALYTIC))
    return rows
