"""Where to split: every contiguous partition of a DNN over a chain of devices and links, simulated,
and the Pareto front of latency, throughput and energy (ParetoPipe's question, any ONNX model).

A candidate assigns the graph's nodes, in topological order, to the devices in one order: stage s
runs nodes [k_s, k_{s+1}) on device s and sends the activations crossing the cut over link s. Split
points are the cut positions where exactly one activation tensor crosses; with `cuts="blocks"` only
those between top-level blocks ("features.7" | "features.8"). Per batch of B samples:

- stage compute: Σ of the nodes' roofline seconds on its device (`perf.dnn_cost.node_seconds`);
- transfer: link latency + B × crossing bytes / link bandwidth (a link scenario p10 / p50 / p90);
- the chain is simulated (`sim.dnn_pipeline`) with `in_flight` batches inside at once (pipelined) and
  with one (sequential): throughput = B / period, latency = Σ stages + transfers for one batch;
- energy per sample: each device's idle power over the period plus its busy power while computing
  (`sim.energy.device_joules`), over B; links draw nothing here.

A candidate is infeasible when a stage's parameters plus twice its largest activation exceed the
device's memory. The front is the non-dominated set of (latency, −throughput, energy) in the chosen
mode (`plan.pareto.pareto_mask`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dnn_graph import DnnGraph
from paretoserve.catalog.links import SCENARIOS, LinkProfile, Scenario
from paretoserve.errors import UserError
from paretoserve.perf.dnn_cost import graph_costs, node_seconds
from paretoserve.perf.roofline import Efficiency
from paretoserve.plan.pareto import pareto_mask
from paretoserve.sim.energy import device_joules
from paretoserve.sim.dnn_pipeline import simulate_pipelines

#: Most candidates one search evaluates (pipelines are simulated together in memory, ~200 MB at most).
MAX_CANDIDATES = 100_000
#: Batches simulated per candidate (the period is measured over the second half).
SIM_BATCHES = 24


@dataclass(frozen=True, slots=True)
class SplitPoint:
    """A cut before node `index`: the last node before it, the first block after it, bytes sent per sample."""

    index: int
    after: str
    block: str
    bytes_per_sample: float


@dataclass(frozen=True, slots=True)
class Partition:
    """One evaluated candidate (times in seconds, throughput in samples/s, energy in J/sample)."""

    devices: tuple[str, ...]
    splits: tuple[SplitPoint, ...]
    stage_s: tuple[float, ...]
    transfer_s: tuple[float, ...]
    latency_s: float
    throughput_pipelined: float
    throughput_sequential: float
    energy_j_pipelined: float
    energy_j_sequential: float
    feasible: bool
    kind: str = "pipeline"

    def throughput(self, mode: str) -> float:
        """Samples/s in `mode` ("pipelined" or "sequential")."""
        return self.throughput_pipelined if mode == "pipelined" else self.throughput_sequential

    def energy(self, mode: str) -> float:
        """Joules per sample in `mode`."""
        return self.energy_j_pipelined if mode == "pipelined" else self.energy_j_sequential

    @property
    def label(self) -> str:
        """"pi5 @features.8 pi5": devices with the first block of each following stage ("attention on
        B, rest on A" for an attention offload)."""
        if self.kind == "attention offload":
            return f"attention+KV on {self.devices[1]}, rest on {self.devices[0]}"
        parts = [self.devices[0]]
        for split, device in zip(self.splits, self.devices[1:], strict=True):
            parts += [f"@{split.block}", device]
        return " ".join(parts)


def split_points(graph: DnnGraph, cuts: str = "blocks") -> list[SplitPoint]:
    """The positions a stage boundary may take (see the module docstring)."""
    if cuts not in ("blocks", "layers"):
        raise UserError(f"--cuts {cuts!r}: expected blocks or layers", field="cuts")
    crossing = graph.crossing()
    points = []
    for k in range(1, len(graph.nodes)):
        before, after = graph.nodes[k - 1], graph.nodes[k]
        if len(crossing[k]) != 1 or (cuts == "blocks" and before.block == after.block):
            continue
        points.append(SplitPoint(k, before.name, after.block, float(graph.tensors[crossing[k][0]].nbytes)))
    return points


@dataclass(frozen=True)
class StageChain:
    """What the partitioner needs of a model: `units` pieces in execution order, where it may be cut,
    and per device the seconds of each piece for one batch of `samples`.

    Attributes:
        name: model name.
        samples: samples per batch (images, or sequences / tokens of an LLM step).
        points: allowed cuts; `bytes_per_sample` × `samples` crosses the link.
        param_bytes: per unit, bytes of weights the unit's device must hold.
        activation_bytes: per unit, bytes of activations of the whole batch (memory check).
        unit_seconds: device -> per-unit seconds for the batch.
    """

    name: str
    samples: int
    points: list[SplitPoint]
    param_bytes: np.ndarray
    activation_bytes: np.ndarray
    unit_seconds: Callable[[DeviceSpec], np.ndarray]

    @property
    def units(self) -> int:
        """Number of pieces."""
        return len(self.param_bytes)


def dnn_chain(graph: DnnGraph, *, batch: int = 1, cuts: str = "blocks",
              efficiency: Efficiency | None = None) -> StageChain:
    """A DNN graph's nodes as a chain: per-node roofline seconds for `batch` samples."""
    if batch < 1:
        raise UserError("batch must be >= 1", field="batch")
    costs = graph_costs(graph)
    eff = efficiency or Efficiency()

    def seconds(device: DeviceSpec) -> np.ndarray:
        return np.array([node_seconds(c, device, batch=batch, eff=eff) for c in costs])

    return StageChain(graph.name, batch, split_points(graph, cuts), np.array([c.param_bytes for c in costs]),
                      np.array([c.activation_bytes for c in costs]) * batch, seconds)


def device_orders(devices: Sequence[DeviceSpec]) -> list[tuple[int, ...]]:
    """Distinct orders of the devices (permutations of indices, identical devices not repeated)."""
    seen, orders = set(), []
    for order in itertools.permutations(range(len(devices))):
        key = tuple(devices[i].name for i in order)
        if key not in seen:
            seen.add(key)
            orders.append(order)
    return orders


def evaluate_partitions(graph: DnnGraph | StageChain, devices: Sequence[DeviceSpec], links: Sequence[LinkProfile],
                        *, batch: int = 1, in_flight: int = 3, scenario: Scenario = "p50", cuts: str = "blocks",
                        efficiency: Efficiency | None = None, fixed_order: bool = False) -> list[Partition]:
    """Every contiguous partition of `graph` (a DNN, costed by `dnn_chain` with `batch`, `cuts` and
    `efficiency`; or a prepared `StageChain`) over all of `devices` (in every distinct order unless
    `fixed_order`), linked in chain order by `links` (one per adjacent pair)."""
    chain = graph if isinstance(graph, StageChain) else dnn_chain(graph, batch=batch, cuts=cuts,
                                                                   efficiency=efficiency)
    stages = len(devices)
    if stages < 1 or len(links) != stages - 1:
        raise UserError(f"{stages} device(s) need {max(stages - 1, 0)} link(s), got {len(links)}", field="links")
    if in_flight < 1:
        raise UserError("in-flight batches must be >= 1", field="in-flight")
    points = chain.points
    if len(points) < stages - 1:
        raise UserError(f"{chain.name} has {len(points)} split point(s); {stages} devices need "
                        f"{stages - 1}: give fewer devices or --cuts layers")
    orders = [tuple(range(stages))] if fixed_order else device_orders(devices)
    count = math.comb(len(points), stages - 1) * len(orders)
    if count > MAX_CANDIDATES:
        raise UserError(f"{count:,} candidate partitions (more than {MAX_CANDIDATES:,}): give fewer devices "
                        "or --cuts blocks")
    n, samples = chain.units, chain.samples
    # Prefix sums per device: compute seconds of units [0, k) for a batch; parameter bytes.
    prefix = {d.name: np.concatenate([[0.0], np.cumsum(chain.unit_seconds(d))])
              for d in {d.name: d for d in devices}.values()}
    param_prefix = np.concatenate([[0.0], np.cumsum(chain.param_bytes)])
    act_peak = chain.activation_bytes
    combos = list(itertools.combinations(points, stages - 1))
    rows: list[tuple[tuple[int, ...], tuple[SplitPoint, ...]]] = [(o, s) for o in orders for s in combos]
    resources = 2 * stages - 1
    times = np.zeros((len(rows), resources))
    feasible = np.ones(len(rows), dtype=bool)
    link_cost = [link.at(scenario) for link in links]
    for i, (order, splits) in enumerate(rows):
        bounds = [0, *(p.index for p in splits), n]
        for s in range(stages):
            device = devices[order[s]]
            lo, hi = bounds[s], bounds[s + 1]
            times[i, 2 * s] = prefix[device.name][hi] - prefix[device.name][lo]
            memory = param_prefix[hi] - param_prefix[lo] + 2.0 * act_peak[lo:hi].max()
            feasible[i] &= memory <= device.mem_capacity
            if s < stages - 1:
                bandwidth, latency = link_cost[s]
                times[i, 2 * s + 1] = latency + samples * splits[s].bytes_per_sample / bandwidth
    tiled = np.repeat(times[:, None, :], SIM_BATCHES, axis=1)
    pipelined = simulate_pipelines(tiled, in_flight).period_s
    sequential = simulate_pipelines(tiled, 1).period_s
    results = []
    for i, (order, splits) in enumerate(rows):
        chain_devices = [devices[j] for j in order]
        busy = times[i, 0::2]
        results.append(Partition(
            devices=tuple(d.name for d in chain_devices), splits=splits, stage_s=tuple(busy.tolist()),
            transfer_s=tuple(times[i, 1::2].tolist()), latency_s=float(times[i].sum()),
            throughput_pipelined=samples / float(pipelined[i]),
            throughput_sequential=samples / float(sequential[i]),
            energy_j_pipelined=chain_energy(chain_devices, busy, float(pipelined[i])) / samples,
            energy_j_sequential=chain_energy(chain_devices, busy, float(sequential[i])) / samples,
            feasible=bool(feasible[i])))
    return results


def chain_energy(chain: Sequence[DeviceSpec], busy: np.ndarray, period_s: float) -> float:
    """Joules all devices of a chain draw over one period in which device s computes busy[s] seconds."""
    return sum(device_joules(d, float(b), period_s) for d, b in zip(chain, busy, strict=True))


def front(partitions: Sequence[Partition], mode: str = "pipelined") -> list[Partition]:
    """The feasible candidates no other feasible one beats on latency, throughput and energy in `mode`,
    by increasing latency."""
    feasible = [p for p in partitions if p.feasible]
    points = [(p.latency_s, -p.throughput(mode), p.energy(mode)) for p in feasible]
    keep = [p for p, k in zip(feasible, pareto_mask(points), strict=True) if k]
    return sorted(keep, key=lambda p: (p.latency_s, -p.throughput(mode)))


def best_throughput(partitions: Sequence[Partition], mode: str = "pipelined") -> Partition | None:
    """The feasible candidate with the highest throughput in `mode` (lower latency, then lower energy
    break ties, so it is on the front)."""
    feasible = [p for p in partitions if p.feasible]
    return max(feasible, key=lambda p: (p.throughput(mode), -p.latency_s, -p.energy(mode)), default=None)


def sensitivity(graph: DnnGraph | StageChain, devices: Sequence[DeviceSpec], links: Sequence[LinkProfile],
                **options: object) -> dict[str, list[Partition]]:
    """The candidates under each link scenario (p10 / p50 / p90 bandwidth), by scenario."""
    return {s: evaluate_partitions(graph, devices, links, scenario=s, **options) for s in SCENARIOS}
