"""`SimulateConfig`: everything needed to repeat a simulated run (written to its config.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from paretoserve.sim.energy import DEFAULT_ACTIVITY


class SimulateConfig(BaseModel):
    """One `paretoserve simulate` run: deployment, engine, workload and reporting settings.

    Deployment: `model` and `hardware` (catalog names or files), `tp` × `pp` devices per replica,
    `replicas` behind `router`, or disaggregated pools `disagg` = "xPyD" with `prefill_tp` /
    `decode_tp` devices each. Engine: `policy` (+ `policy_options`), `max_num_seqs`,
    `max_num_batched_tokens`, the step-time model (`profile`: a calibrated profile file, else the
    datasheet roofline), KV memory from `gpu_memory_utilization` (or `kv_tokens` per replica
    to override the memory model), `block_size` (None: the policy's default), `prefix_caching`,
    `weight_dtype`, `kv_dtype`.
    Workload (see `paretoserve.workload.synthetic.iter_workload`): `trace`, `arrival`, `rate` or
    `rate_scale`, `requests`, `duration_s`, `prompt`, `output`, `seed`; `concurrency` caps the
    requests in flight, and alone (no rate, rate scale or arrival process) makes the run a closed
    loop of that many users over `warmup` warm-up requests (drained before the measured ones start)
    and `requests` measured ones, summarised by `window`: "steady" leaves out the first 2·C and
    last C measured completions, "all" keeps the ramp-up and drain as aiperf does
    (`paretoserve.sim.closed_loop`). Speculative decoding (`paretoserve.perf.speculative`):
    `speculative` = "mtp", "eagle" or "draft:MODEL" with `num_speculative_tokens` K and one of
    `acceptance_length` (mean tokens per verify step) and `acceptance_rate` (per position); the
    acceptance is sampled with `seed`. Reporting: `slo`,
    `activity` (energy model), `iteration_trace`; `fast=False` simulates iteration by iteration.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    hardware: str
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    dp_attention: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    moe_skew: float = Field(1.0, ge=1)
    eplb_redundant: int = Field(0, ge=0)
    replicas: int = Field(1, ge=1)
    router: str = "round_robin"
    disagg: str | None = None
    prefill_tp: int | None = Field(None, ge=1)
    decode_tp: int | None = Field(None, ge=1)
    trace: str | None = None
    arrival: str = "trace"
    rate: float | None = Field(None, gt=0)
    rate_scale: float | None = Field(None, gt=0)
    requests: int | None = Field(None, ge=1)
    duration_s: float | None = Field(None, gt=0)
    prompt: str | None = None
    output: str | None = None
    seed: int = 0
    concurrency: int | None = Field(None, ge=1)
    warmup: int = Field(0, ge=0)
    window: Literal["steady", "all"] = "steady"
    policy: str = "vllm"
    policy_options: dict[str, float] = Field(default_factory=dict)
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_tokens: int | None = Field(None, ge=1)
    block_size: int | None = Field(None, ge=1)
    prefix_caching: bool = True
    weight_dtype: str | None = None
    kv_dtype: str | None = None
    profile: str | None = None
    slo: str | None = None
    activity: float = Field(DEFAULT_ACTIVITY, ge=0, le=1)
    iteration_trace: bool = False
    fast: bool = True
    speculative: str | None = None
    num_speculative_tokens: int | None = None
    acceptance_length: float | None = None
    acceptance_rate: float | None = None

    @property
    def closed_loop(self) -> bool:
        """A fixed-concurrency run: a concurrency and no rate, rate scale or arrival process."""
        return (self.concurrency is not None and self.rate is None and self.rate_scale is None
                and self.arrival == "trace")
