"""The search space of deployment plans, and their enumeration with feasibility pruning."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.dtypes import normalize_dtype
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import kv_capacity
from paretoserve.sim.cluster import ROUTERS
from paretoserve.sim.schedulers import POLICIES
from paretoserve.textfiles import read_yaml


@dataclass(frozen=True, slots=True)
class Engine:
    """One engine instance's configuration: `tp × dp_attention × pp` devices of one kind (attention
    TP × attention-DP ranks, the routed experts split `ep` ways over them; `perf.layout`) and its
    batching knobs."""

    device: str
    tp: int = 1
    pp: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    policy: str = "vllm"
    dp_attention: int = 1
    ep: int = 1

    @property
    def devices(self) -> int:
        """Devices one instance uses."""
        return self.tp * self.dp_attention * self.pp

    @property
    def layout(self) -> ParallelLayout:
        """The instance's parallel layout (UserError when it cannot be built, e.g. EP ∤ TP × DP)."""
        return ParallelLayout(tp=self.tp, pp=self.pp, attention_dp=self.dp_attention, ep=self.ep)


@dataclass(frozen=True, slots=True)
class Plan:
    """A deployment plan: `replicas` aggregated engines behind `router`, or disaggregated pools
    of `prefill_replicas` engines like `engine` with `prefill_tp` and `decode_replicas` with
    `decode_tp`."""

    engine: Engine
    replicas: int = 1
    router: str = "round_robin"
    disagg: tuple[int, int, int, int] | None = None  # (prefill replicas, prefill tp, decode replicas, decode tp)

    @property
    def devices(self) -> int:
        """Devices the whole plan uses."""
        if self.disagg:
            x, tp_p, y, tp_d = self.disagg
            return (x * tp_p + y * tp_d) * self.engine.pp
        return self.replicas * self.engine.devices

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. '4×h100_sxm tp2 dp2 kvfp8' ('dpa4 ep4': 4 attention-DP
        ranks, routed experts over 4 EP ways)."""
        e = self.engine
        if self.disagg:
            x, tp_p, y, tp_d = self.disagg
            shape = f"{x}P(tp{tp_p})+{y}D(tp{tp_d})"
        else:
            shape = (f"tp{e.tp}" + (f" dpa{e.dp_attention}" if e.dp_attention > 1 else "")
                     + (f" ep{e.ep}" if e.ep > 1 else "") + (f" pp{e.pp}" if e.pp > 1 else "")
                     + f" dp{self.replicas}")
        extras = [f"seqs{e.max_num_seqs}", f"mbt{e.max_num_batched_tokens}"]
        if e.weight_dtype != "bf16":
            extras.append(f"w{e.weight_dtype}")
        if e.kv_dtype != "bf16":
            extras.append(f"kv{e.kv_dtype}")
        if e.policy != "vllm":
            extras.append(e.policy)
        return f"{self.devices}×{e.device} {shape} " + " ".join(extras)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready description (the schema of plans.jsonl's `plan` field)."""
        data: dict[str, object] = {**asdict(self.engine), "dp": self.replicas, "router": self.router,
                                   "disagg": None}
        if self.disagg:
            x, tp_p, y, tp_d = self.disagg
            data["disagg"] = {"prefill": {"replicas": x, "tp": tp_p}, "decode": {"replicas": y, "tp": tp_d}}
        return data


class SearchSpace(BaseModel):
    """What the planner may choose from (YAML file or flags). Lists are alternatives."""

    model_config = ConfigDict(extra="forbid")

    devices: list[str] = Field(min_length=1)
    max_devices: int = Field(8, ge=1, description="device budget (--budget): devices a plan may use")
    max_usd_per_hour: float | None = Field(None, gt=0, description="dollar budget (--budget-usd): USD per hour")
    tp: list[PositiveInt] = [1, 2, 4, 8]
    pp: list[PositiveInt] = [1]
    dp_attention: list[PositiveInt] = Field([1], description="attention-DP ranks (MoE models; --dp-attention)")
    ep: list[PositiveInt] = Field([1], description="expert-parallel ways (MoE models; --ep)")
    max_num_seqs: list[PositiveInt] = [256]
    max_num_batched_tokens: list[PositiveInt] = [8192]
    weight_dtypes: list[str] = ["bf16"]
    kv_dtypes: list[str] = ["bf16"]
    policies: list[str] = ["vllm"]
    router: str = "round_robin"
    disagg: bool = True
    max_pool_replicas: int = Field(4, ge=1, description="largest prefill or decode pool in xPyD plans")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    hetero_stages: list[list[str]] = Field([], description="pipelines whose stages run on different device "
                                           "types, one device per stage in order (--hetero-stages a+b)")
    attention_offload: list[list[str]] = Field([], description="(dense device, attention + KV device) pairs "
                                               "(--attention-offload dense+attention)")
    hetero_link: str | None = Field(None, description="link between a heterogeneous replica's devices "
                                    "(catalog.links spec; default: the devices' inter-node figures)")

    @field_validator("hetero_stages")
    @classmethod
    def _chains(cls, values: list[list[str]]) -> list[list[str]]:
        for chain in values:
            if len(chain) < 2:
                raise ValueError(f"a heterogeneous pipeline needs at least 2 stages, got {'+'.join(chain)!r}")
        return values

    @field_validator("attention_offload")
    @classmethod
    def _pairs(cls, values: list[list[str]]) -> list[list[str]]:
        for pair in values:
            if len(pair) != 2:
                raise ValueError(f"an attention offload is 2 devices (dense+attention), got {'+'.join(pair)!r}")
        return values

    @field_validator("weight_dtypes", "kv_dtypes")
    @classmethod
    def _dtypes(cls, values: list[str]) -> list[str]:
        return [normalize_dtype(v) for v in values]

    @field_validator("devices", "tp", "pp", "dp_attention", "ep", "max_num_seqs", "max_num_batched_tokens", "policies")
    @classmethod
    def _non_empty(cls, values: list) -> list:
        if not values:
            raise ValueError("must list at least one option")
        return values

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in POLICIES:
                raise ValueError(f"unknown policy '{value}'; expected some of {', '.join(POLICIES)}")
        return values

    @field_validator("router")
    @classmethod
    def _known_router(cls, value: str) -> str:
        if value not in ROUTERS:
            raise ValueError(f"unknown router '{value}'; expected one of {', '.join(ROUTERS)}")
        return value

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: object) -> SearchSpace:
        """Load a YAML search space; flags given on the command line override its fields."""
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise UserError("expected a mapping of search-space fields", file=str(path))
        return cls.build({**raw, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))

    @classmethod
    def build(cls, fields: dict[str, object], *, source: str = "search space") -> SearchSpace:
        """Validate fields into a SearchSpace; a bad field → one-line UserError naming it."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"]) or "?"
            raise UserError(f"{err['msg']}", file=source, field=name) from None


@dataclass
class Enumeration:
    """Plans to evaluate, and what pruning removed: counts per reason, overall and per device
    type, and per device type the smallest plan that fits in memory but is over a budget; `notes`
    say which choices of the space did not apply (e.g. EP on a dense model)."""

    plans: list[Plan] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)
    pruned_by_device: dict[str, dict[str, int]] = field(default_factory=dict)
    over_budget: dict[str, tuple[Plan, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def prune(self, reason: str, device: str) -> None:
        """Count one plan on `device` removed for `reason`."""
        self.pruned[reason] = self.pruned.get(reason, 0) + 1
        mine = self.pruned_by_device.setdefault(device, {})
        mine[reason] = mine.get(reason, 0) + 1

    @property
    def smallest_infeasible(self) -> tuple[Plan, str] | None:
        """The smallest plan over a budget (fewest devices, of any type), with the budget's name."""
        return min(self.over_budget.values(), key=lambda item: item[0].devices, default=None)


def enumerate_plans(space: SearchSpace, model: ModelSpec) -> Enumeration:
    """Every plan in `space` that fits the budget and memory, aggregated then disaggregated.

    Aggregated plans are one replica each: their per-device figures do not change with the number
    of replicas behind a router, which the rate mode of the planner chooses. Attention-DP and EP
    choices apply to mixture-of-experts models only (a dense model's plans use 1 and 1, with a
    note) and to aggregated plans only (disaggregated pools use attention TP alone).
    """
    result = Enumeration()
    devices = {name: load_device(name) for name in space.devices}
    fits: dict[tuple, bool] = {}
    dp_choices, ep_choices = space.dp_attention, space.ep
    if not any(layer.mlp.kind == "moe" for layer in model.layers) and (dp_choices != [1] or ep_choices != [1]):
        result.notes.append(f"{model.name} is dense: the attention-DP and EP choices (--dp-attention, --ep) "
                            "apply to mixture-of-experts models only and are ignored")
        dp_choices, ep_choices = [1], [1]

    def engine_fits(engine: Engine) -> bool:
        key = (engine.device, engine.tp, engine.pp, engine.dp_attention, engine.ep, engine.weight_dtype,
               engine.kv_dtype, engine.max_num_batched_tokens, engine.max_num_seqs)
        if key not in fits:
            fits[key] = _fits(engine, devices[engine.device], model, space, result)
        return fits[key]

    for name, tp, pp, dpa, ep, seqs, mbt, wdt, kdt, policy in itertools.product(
            space.devices, space.tp, space.pp, dp_choices, ep_choices, space.max_num_seqs,
            space.max_num_batched_tokens, space.weight_dtypes, space.kv_dtypes, space.policies):
        engine = Engine(devices[name].name, tp, pp, seqs, mbt, wdt, kdt, policy, dpa, ep)
        if not _valid_layout(model, engine, result):
            continue
        plan = Plan(engine, 1, space.router)
        if engine_fits(engine) and _within_budget(plan, devices[name], space, result):
            result.plans.append(plan)
    if space.disagg:
        result.plans.extend(_disagg_plans(space, model, devices, engine_fits, result))
    return result


def _disagg_plans(space: SearchSpace, model: ModelSpec, devices: dict[str, DeviceSpec], engine_fits,
                  result: Enumeration) -> Iterator[Plan]:
    pool = range(1, space.max_pool_replicas + 1)
    for name, pp, seqs, mbt, wdt, kdt in itertools.product(
            space.devices, space.pp, space.max_num_seqs, space.max_num_batched_tokens,
            space.weight_dtypes, space.kv_dtypes):
        for tp_p, tp_d in itertools.product(space.tp, space.tp):
            prefill = Engine(devices[name].name, tp_p, pp, seqs, mbt, wdt, kdt, "vllm")
            decode = Engine(devices[name].name, tp_d, pp, seqs, mbt, wdt, kdt, "vllm")
            if not (_valid_layout(model, prefill, result) and _valid_layout(model, decode, result)):
                continue
            if not (engine_fits(prefill) and engine_fits(decode)):
                continue
            for x, y in itertools.product(pool, pool):
                plan = Plan(prefill, 1, space.router, (x, tp_p, y, tp_d))
                if _within_budget(plan, devices[name], space, result):
                    yield plan


def _valid_layout(model: ModelSpec, engine: Engine, result: Enumeration) -> bool:
    """The engine's layout can run the model (`ParallelLayout` and its `check`); else pruned."""
    try:
        engine.layout.check(model)
    except UserError:
        result.prune("parallelism does not divide the model", engine.device)
        return False
    return True


def _within_budget(plan: Plan, device: DeviceSpec, space: SearchSpace, result: Enumeration) -> bool:
    reason = None
    if plan.devices > space.max_devices:
        reason = "over the device budget"
    elif space.max_usd_per_hour is not None and plan.devices * device.price_per_hour > space.max_usd_per_hour:
        reason = "over the dollar budget"
    if reason:
        result.prune(reason, device.name)
        smallest = result.over_budget.get(device.name)
        if smallest is None or plan.devices < smallest[0].devices:
            result.over_budget[device.name] = (plan, reason)
        return False
    return True


def _fits(engine: Engine, device: DeviceSpec, model: ModelSpec, space: SearchSpace,
          result: Enumeration) -> bool:
    try:
        cap = kv_capacity(model, device, layout=engine.layout,
                          gpu_memory_utilization=space.gpu_memory_utilization,
                          weight_dtype=engine.weight_dtype, kv_dtype=engine.kv_dtype,
                          max_num_batched_tokens=engine.max_num_batched_tokens,
                          max_num_seqs=engine.max_num_seqs)
    except UserError:
        result.prune("weights and runtime do not fit in memory", device.name)
        return False
    # At least one request of the model's full context must fit, as vLLM requires at start-up.
    if cap.max_sequences(min(model.max_position_embeddings, 4096)) < 1:
        result.prune("KV cache below one 4k-token request", device.name)
        return False
    return True
