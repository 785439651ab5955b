"""`paretoserve estimate`: roofline step times, per-operator breakdown and KV capacity."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from paretoserve.cli.app import app, console

if TYPE_CHECKING:
    from paretoserve.perf.estimate import Estimate
    from paretoserve.perf.shape import StepTime


@app.command("estimate")
def estimate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Bundled model name or path to a config.json."),
    hardware: str = typer.Option(..., "--hardware", "-H", help="Catalog device name or a device YAML."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel devices."),
    pp: int = typer.Option(1, "--pp", help="Pipeline-parallel stages."),
    dp_attention: int = typer.Option(1, "--dp-attention", help="Attention data-parallel ranks (MoE spans them)."),
    ep: int = typer.Option(1, "--ep", help="Expert-parallel ways of the MoE layers."),
    batch: int = typer.Option(1, "--batch", "-b", min=1, help="Sequences in the batch."),
    prompt: int = typer.Option(1024, "--prompt", "-p", min=1, help="Prompt tokens per sequence (prefill)."),
    context: int | None = typer.Option(None, "--context", min=1,
                                       help="Decode context per sequence [default: prompt]."),
    weight_dtype: str | None = typer.Option(None, "--weight-dtype", help="bf16, fp8, int8, int4, fp4."),
    kv_dtype: str | None = typer.Option(None, "--kv-dtype", help="KV-cache dtype: bf16, fp8, int8."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization"),
    profile: str | None = typer.Option(None, "--profile", help="Calibrated profile (YAML) for the hardware."),
    speculative: str | None = typer.Option(None, "--speculative",
                                           help="Also a verify step: mtp, eagle or draft:MODEL."),
    num_speculative_tokens: int | None = typer.Option(None, "--num-speculative-tokens",
                                                      help="K: tokens drafted per step."),
    acceptance_length: float | None = typer.Option(None, "--acceptance-length",
                                                   help="Mean tokens per verify step, accepted + 1."),
    acceptance_rate: float | None = typer.Option(None, "--acceptance-rate",
                                                 help="Per-position acceptance α in [0, 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Estimate one prefill step and one decode step (datasheet roofline) and the KV capacity."""
    from paretoserve.errors import UserError
    from paretoserve.perf.estimate import estimate
    from paretoserve.perf.speculative import Speculation

    if speculative is None and (num_speculative_tokens, acceptance_length, acceptance_rate) != (None, None, None):
        raise UserError("--num-speculative-tokens/--acceptance-length/--acceptance-rate need --speculative",
                        field="speculative")
    speculation = None if speculative is None else Speculation.parse(
        speculative, num_speculative_tokens, acceptance_length, acceptance_rate)
    est = estimate(model, hardware, tp=tp, pp=pp, dp_attention=dp_attention, ep=ep, batch=batch,
                   prompt=prompt, context=context,
                   weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                   gpu_memory_utilization=gpu_memory_utilization, profile=profile, speculation=speculation)
    if as_json:
        print(json.dumps(est.to_dict(), indent=2))
        return
    _print(est)


def _print(est: Estimate) -> None:
    p = est.model.params
    console.print(f"[bold]{est.model.name}[/] on {est.tp * est.pp}× [bold]{est.device.display_name}[/] "
                  f"(tp={est.tp}, pp={est.pp}) — {p.total / 1e9:.2f} B params, {p.active / 1e9:.2f} B "
                  f"active; weights {est.weight_dtype}, KV {est.kv_dtype}")
    for title, step in ((f"Prefill: {est.batch} × {est.prompt} prompt tokens", est.prefill),
                        (f"Decode: {est.batch} sequences at {est.context} tokens of context", est.decode)):
        console.print(_op_table(title, step))
    if est.verify is not None and est.speculation is not None:
        console.print(_op_table(f"Verify ({est.speculation.describe()}): {est.batch} sequences × "
                                f"{est.speculation.width} tokens", est.verify))
    kv = est.kv
    console.print(
        f"prefill {est.prefill.seconds * 1e3:.2f} ms → {est.prefill_tokens_per_s:,.0f} prompt tok/s;  "
        f"decode step {est.decode.seconds * 1e3:.2f} ms → {est.decode_tokens_per_s:,.0f} output tok/s "
        f"({1 / est.decode.seconds:,.1f} tok/s per sequence)")
    if est.verify is not None and est.speculation is not None and est.verify_tokens_per_s is not None:
        console.print(
            f"verify step {est.verify.seconds * 1e3:.2f} ms × {est.speculation.mean_tokens:.3g} tokens per "
            f"sequence → {est.verify_tokens_per_s:,.0f} output tok/s "
            f"({est.verify_tokens_per_s / est.decode_tokens_per_s:.2f}× plain decode); KV cache with the "
            f"drafter's weights and KV: {est.kv_tokens_with_drafter:,} tokens")
    console.print(
        f"KV cache: {kv.tokens:,} tokens ({kv.bytes / 1e9:.1f} GB, "
        f"{kv.bytes_per_token / 1024:.1f} KiB/token); "
        f"weights {kv.weight_bytes_per_device / 1e9:.1f} GB per device; "
        f"max {kv.max_sequences(est.context):,} concurrent sequences at {est.context} tokens")
    if kv.max_sequences(est.context) < est.batch:
        console.print(f"[yellow]warning:[/] a batch of {est.batch} at {est.context} tokens does not fit "
                      "in the KV cache")
    if est.profile:
        console.print(f"[dim]Estimated with the calibrated profile {est.profile}.[/]")
    else:
        console.print("[dim]Estimated by the datasheet roofline with default efficiencies; "
                      "calibrate (paretoserve calibrate) for measured accuracy.[/]")


def _op_table(title: str, step: StepTime) -> Table:
    table = Table(title=f"{title} (per device)", title_justify="left")
    for col in ("operator", "time ms", "share", "GFLOP", "MB moved", "bound"):
        table.add_column(col, justify="left" if col in ("operator", "bound") else "right", no_wrap=True)
    for op in sorted(step.ops, key=lambda o: -o.seconds):
        share = op.seconds / step.seconds if step.seconds else 0.0
        table.add_row(op.name, f"{op.seconds * 1e3:.3f}", f"{share:.1%}", f"{op.flops / 1e9:,.1f}",
                      f"{op.bytes / 1e6:,.1f}", op.bound)
    table.add_row("[bold]total[/]", f"[bold]{step.seconds * 1e3:.3f}[/]", "100%",
                  f"{step.flops / 1e9:,.1f}", f"{step.bytes / 1e6:,.1f}", "")
    return table
