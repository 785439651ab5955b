"""`paretoserve partition` as a library call: resolve the inputs, search every scenario, write the files.

`--model` is a DNN (a bundled graph or an .onnx file, `catalog.dnn_graph`) or an LLM (a bundled
model or a config.json, `catalog.model`) split by layers for one prefill or decode step
(`plan.partition_llm`).

The run folder holds `front.csv` (the median-link front, split points named by layer),
`candidates.csv` (every candidate at the median link), `sensitivity.csv` (per link scenario p10 /
p50 / p90: the best-throughput and knee splits and the front's size) and `config.yaml`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import yaml

from paretoserve.atomic import write_text_atomic
from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.dnn_graph import is_dnn, load_graph
from paretoserve.catalog.links import SCENARIOS, LinkProfile, load_link
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.dnn_cost import graph_costs, unknown_ops
from paretoserve.perf.roofline import Efficiency
from paretoserve.plan.pareto import knee_index
from paretoserve.plan.partition import Partition, StageChain, best_throughput, dnn_chain, front, sensitivity

FRONT_COLUMNS = ("rank", "kind", "label", "devices", "splits", "split_after_layers", "latency_ms", "throughput_per_s",
                 "energy_mj_per_sample", "sequential_throughput_per_s", "pipeline_speedup", "stage_ms",
                 "transfer_ms", "transfer_kb_per_sample", "knee", "best_throughput")


@dataclass(frozen=True)
class PartitionRequest:
    """What to partition, over what, how (SI units; `efficiency` = fraction of peak FLOP/s reached)."""

    model: str
    devices: tuple[str, ...]
    links: tuple[str, ...]
    batch: int = 8
    in_flight: int = 3
    mode: str = "pipelined"
    cuts: str = "blocks"
    efficiency: float = Efficiency().gemm
    fixed_order: bool = False
    phase: str = "prefill"
    tokens: int = 1024


@dataclass(frozen=True)
class PartitionResult:
    """Candidates per link scenario, the median front, its knee and best-throughput members."""

    request: PartitionRequest
    stage_chain: StageChain
    model_info: dict[str, object]
    chain: tuple[DeviceSpec, ...]
    link_profiles: tuple[LinkProfile, ...]
    by_scenario: dict[str, list[Partition]]
    fronts: dict[str, list[Partition]]

    def knee(self, scenario: str = "p50") -> Partition | None:
        """The knee of a scenario's front on (latency, −throughput, energy)."""
        f = self.fronts[scenario]
        mode = self.request.mode
        index = knee_index([(p.latency_s, -p.throughput(mode), p.energy(mode)) for p in f])
        return None if index is None else f[index]

    def best(self, scenario: str = "p50") -> Partition | None:
        """The highest-throughput feasible candidate of a scenario."""
        return best_throughput(self.by_scenario[scenario], self.request.mode)


def run_partition(request: PartitionRequest) -> PartitionResult:
    """Evaluate every partition under the p10, p50 and p90 link scenarios (UserError for bad input)."""
    if request.mode not in ("pipelined", "sequential"):
        raise UserError(f"--mode {request.mode!r}: expected pipelined or sequential", field="mode")
    if not 0 < request.efficiency <= 1:
        raise UserError(f"--efficiency {request.efficiency:g}: expected a fraction of peak in (0, 1]")
    if not request.devices:
        raise UserError("--devices: give at least one device, e.g. pi5,pi5,jetson_orin_nx", field="devices")
    stage_chain, info, model = _model_chain(request)
    chain = tuple(load_device(d) for d in request.devices)
    links = request.links
    if len(chain) > 1 and len(links) == 1:
        links = links * (len(chain) - 1)
    if len(links) != max(len(chain) - 1, 0):
        raise UserError(f"--links: {len(chain)} devices need {len(chain) - 1} link(s) (or one for all), "
                        f"got {len(request.links)}", field="links")
    profiles = tuple(load_link(link) for link in links)
    by_scenario = sensitivity(stage_chain, chain, profiles, in_flight=request.in_flight,
                              fixed_order=request.fixed_order)
    if model is not None and len(chain) == 2 and chain[0].name != chain[1].name:
        _add_attention_offload(by_scenario, model, chain, profiles[0], request)
    fronts = {s: front(parts, request.mode) for s, parts in by_scenario.items()}
    return PartitionResult(request, stage_chain, info, chain, profiles, by_scenario, fronts)


def _add_attention_offload(by_scenario: dict[str, list[Partition]], model: ModelSpec,
                           chain: tuple[DeviceSpec, ...], link: LinkProfile, request: PartitionRequest) -> None:
    """Two device types: also attention + KV on either one and the rest on the other, per scenario."""
    from paretoserve.plan.partition_llm import attention_offload

    if {layer.attention.kind for layer, _ in model.layer_groups} != {"gqa"}:
        return
    orders = [(0, 1)] if request.fixed_order else [(0, 1), (1, 0)]
    for scenario, parts in by_scenario.items():
        parts += [attention_offload(model, chain[a], chain[b], link, phase=request.phase, sequences=request.batch,
                                    tokens=request.tokens, in_flight=request.in_flight, scenario=scenario,
                                    efficiency=Efficiency(gemm=request.efficiency)) for a, b in orders]


def _model_chain(request: PartitionRequest) -> tuple[StageChain, dict[str, object], ModelSpec | None]:
    """The stage chain of `request.model`, what config.yaml records about it, and the LLM (None for a DNN)."""
    efficiency = Efficiency(gemm=request.efficiency)
    if is_dnn(request.model):
        graph = load_graph(request.model)
        costs = graph_costs(graph)
        info = {"kind": "dnn", "source": graph.source, "units": len(graph.nodes),
                "macs_per_sample": sum(c.macs for c in costs), "flops_per_sample": sum(c.flops for c in costs),
                "param_bytes": graph.param_bytes(), "unknown_ops": unknown_ops(graph), "cuts": request.cuts,
                "sample": "image"}
        return dnn_chain(graph, batch=request.batch, cuts=request.cuts, efficiency=efficiency), info, None
    from paretoserve.catalog.dnn_zoo import BUNDLED
    from paretoserve.catalog.model import load_model
    from paretoserve.plan.partition_llm import llm_chain

    try:
        model = load_model(request.model)
    except UserError as exc:
        raise UserError(f"{exc} (or a DNN graph: {', '.join(sorted(BUNDLED))}, or an .onnx file)") from None
    chain = llm_chain(model, phase=request.phase, sequences=request.batch, tokens=request.tokens,
                      efficiency=efficiency)
    info = {"kind": "llm", "source": f"LLM {model.name} (datasheet roofline step model)", "units": chain.units,
            "phase": request.phase, "tokens": request.tokens, "param_bytes": float(chain.param_bytes.sum()),
            "sample": "sequence" if request.phase == "prefill" else "token"}
    return chain, info, model


def _ms(values: tuple[float, ...]) -> str:
    return ";".join(f"{v * 1e3:.4g}" for v in values)


def _row(p: Partition, rank: int | str, mode: str, *, knee: bool, best: bool) -> list[object]:
    return [rank, p.kind, p.label, ";".join(p.devices), ";".join(s.block for s in p.splits),
            ";".join(s.after for s in p.splits),
            f"{p.latency_s * 1e3:.6g}", f"{p.throughput(mode):.6g}", f"{p.energy(mode) * 1e3:.6g}",
            f"{p.throughput_sequential:.6g}", f"{p.throughput_pipelined / p.throughput_sequential:.4g}",
            _ms(p.stage_s), _ms(p.transfer_s), ";".join(f"{s.bytes_per_sample / 1e3:.4g}" for s in p.splits),
            int(knee), int(best)]


def _csv(header: tuple[str, ...], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_partition_outputs(result: PartitionResult, folder: Path) -> None:
    """front.csv, candidates.csv, sensitivity.csv and config.yaml in `folder`."""
    mode = result.request.mode
    knee, best = result.knee(), result.best()
    write_text_atomic(folder / "front.csv", _csv(FRONT_COLUMNS, [
        _row(p, i, mode, knee=p is knee, best=p is best) for i, p in enumerate(result.fronts["p50"], 1)]))
    on_front = {id(p) for p in result.fronts["p50"]}
    write_text_atomic(folder / "candidates.csv", _csv((*FRONT_COLUMNS, "on_front", "feasible"), [
        [*_row(p, "", mode, knee=p is knee, best=p is best), int(id(p) in on_front), int(p.feasible)]
        for p in result.by_scenario["p50"]]))
    sens = []
    for s in SCENARIOS:
        k, b = result.knee(s), result.best(s)
        sens.append([s, len(result.fronts[s]), b.label if b else "", f"{b.throughput(mode):.6g}" if b else "",
                     k.label if k else "", f"{k.latency_s * 1e3:.6g}" if k else ""])
    write_text_atomic(folder / "sensitivity.csv", _csv(
        ("link_scenario", "front_size", "best_throughput_split", "best_throughput_per_s", "knee_split",
         "knee_latency_ms"), sens))
    r = result.request
    config = {
        "command": "partition", "model": r.model, **result.model_info, "devices": list(r.devices),
        "links": [link.name for link in result.link_profiles], "batch": r.batch, "in_flight": r.in_flight,
        "mode": r.mode, "compute_efficiency": r.efficiency, "fixed_order": r.fixed_order,
        "candidates": len(result.by_scenario["p50"]),
        "link_scenarios": {"p10": "p10 bandwidth, p90 latency", "p50": "medians", "p90": "p90 bandwidth, p10 latency"},
        "estimated": True,
    }
    write_text_atomic(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
