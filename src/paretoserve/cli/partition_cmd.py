"""`paretoserve partition`: where to split a DNN across edge devices and links (the Pareto front)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from paretoserve.cli.app import app, console
from paretoserve.report.tables import compact_table

if TYPE_CHECKING:
    from paretoserve.plan.partition_run import PartitionResult

#: The command named in the output folder's marker (`paretoserve.outputs`).
OUT_COMMAND = "partition"


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


@app.command("partition")
def partition_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Bundled graph (mobilenetv2, mobilenetv2_cifar10, "
                              "resnet18, resnet50, vit_tiny), an .onnx file, or an LLM (bundled name or "
                              "config.json) split by layers."),
    devices: str = typer.Option(..., "--devices", "-d", help="Devices of the chain, e.g. pi5,pi5,jetson_orin_nx."),
    links: str = typer.Option("gbe", "--links", "-l", help="Links between adjacent devices (one for all, or "
                              "one per pair): gbe, wifi5, wifi6, 5g, a link .yaml, or BANDWIDTH@LATENCY such as "
                              "100Mbps@2ms."),
    batch: int = typer.Option(8, "--batch", "-b", min=1, help="Samples per batch (images; LLM: sequences)."),
    phase: str = typer.Option("prefill", "--phase", help="LLM only: partition a prefill or a decode step."),
    tokens: int = typer.Option(1024, "--tokens", min=1, help="LLM only: prompt tokens (prefill) or context (decode) "
                               "per sequence."),
    in_flight: int = typer.Option(3, "--in-flight", min=1, help="Batches in the pipeline at once (pipelined)."),
    mode: str = typer.Option("pipelined", "--mode", help="Front of pipelined or sequential execution."),
    cuts: str = typer.Option("blocks", "--cuts", help="Split points: blocks (between top-level blocks) or "
                             "layers (any single-tensor cut)."),
    efficiency: float = typer.Option(0.7, "--efficiency", help="Fraction of peak FLOP/s reached (0.10 fits "
                                     "ParetoPipe's PyTorch on Raspberry Pi)."),
    fixed_order: bool = typer.Option(False, "--fixed-order", help="Keep the devices in the order given."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (new, or an earlier partition run)."),
) -> None:
    """Every contiguous split of a DNN over a device chain: the front of latency, throughput, energy."""
    from paretoserve.outputs import building_folder, claim_folder
    from paretoserve.plan.partition_run import PartitionRequest, run_partition, write_partition_outputs
    from paretoserve.report.partition_page import partition_report

    request = PartitionRequest(model=model, devices=_words(devices), links=_words(links), batch=batch,
                               in_flight=in_flight, mode=mode, cuts=cuts, efficiency=efficiency,
                               fixed_order=fixed_order, phase=phase, tokens=tokens)
    inputs = [model, *request.links]
    claim_folder(out, OUT_COMMAND, inputs=inputs)
    result = run_partition(request)
    with building_folder(out, OUT_COMMAND, inputs=inputs) as tmp:
        write_partition_outputs(result, tmp)
        partition_report(result, tmp / "report.html")
    _print(result)
    console.print(f"report: {out / 'report.html'}   front: {out / 'front.csv'}", soft_wrap=True)


def _print(result: PartitionResult) -> None:
    mode = result.request.mode
    front = result.fronts["p50"]
    knee, best = result.knee(), result.best()
    table = compact_table(f"Pareto front, {mode}, median link ({len(front)} of {len(result.by_scenario['p50'])} "
                          f"partitions of {result.stage_chain.name}, batch {result.request.batch}) — estimated")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("devices @ first block of the next stage")
    sample = result.model_info["sample"]
    for col in ("latency\nms", f"{sample}s\n/s", f"mJ/\n{sample}", "speed-up\nvs seq", ""):
        table.add_column(col, justify="right", no_wrap=True)
    for i, p in enumerate(front[:25], 1):
        marks = " ".join(m for m, on in (("best", p is best), ("knee", p is knee)) if on)
        table.add_row(str(i), p.label, f"{p.latency_s * 1e3:,.1f}", f"{p.throughput(mode):,.2f}",
                      f"{p.energy(mode) * 1e3:,.1f}", f"{p.throughput_pipelined / p.throughput_sequential:.2f}×",
                      marks)
    console.print(table)
    for scenario in ("p10", "p50", "p90"):
        b = result.best(scenario)
        if b is not None:
            console.print(f"link {scenario}: best throughput {b.throughput(mode):,.2f} {sample}s/s with {b.label}",
                          highlight=False)
