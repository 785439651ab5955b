"""`paretoserve plan`: search deployment plans, print the Pareto front, write the report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from paretoserve.cli.app import app, console
from paretoserve.errors import UserError
from paretoserve.report.tables import compact_table

if TYPE_CHECKING:
    from paretoserve.plan.api import PlanResult


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: expected positive integers, e.g. 1,2,4")
    return values


def _words(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _chains(text: str | None) -> list[list[str]] | None:
    """"a+b,c+d" -> [[a, b], [c, d]]."""
    return None if text is None else [[d.strip() for d in chain.split("+") if d.strip()]
                                      for chain in text.split(",") if chain.strip()]


@app.command("plan")
def plan_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Bundled model name or path to a config.json."),
    trace: str = typer.Option("azure-conv", "--trace", "-t",
                              help="Bundled trace (azure-conv, azure-code, mooncake-conv) or a trace file."),
    slo: str = typer.Option("ttft_p90=2s,tpot_p90=100ms", "--slo", help="e.g. ttft_p90=1s,tpot_p90=60ms"),
    hardware: str | None = typer.Option(None, "--hardware", "-H", "--gpus",
                                        help="Catalog devices to consider, e.g. h100_sxm,l40s "
                                        "[default: h100_sxm]; --gpus is an alias."),
    budget: int | None = typer.Option(None, "--budget", help="Device budget: the most devices a plan may "
                                      "use (max_devices in a --space file) [default: 8]."),
    budget_usd: float | None = typer.Option(None, "--budget-usd", help="Dollar budget: the most US dollars "
                                            "per hour a plan may cost (max_usd_per_hour in a --space file)."),
    space_file: Path | None = typer.Option(None, "--space", help="YAML search space (flags override it)."),
    tp: str | None = typer.Option(None, "--tp", help="TP sizes to try [default: 1,2,4,8]."),
    pp: str | None = typer.Option(None, "--pp", help="PP sizes to try [default: 1]."),
    dp_attention: str | None = typer.Option(None, "--dp-attention", help="Attention-DP ranks to try, MoE "
                                            "models only (as simulate's --dp-attention) [default: 1]."),
    ep: str | None = typer.Option(None, "--ep", help="Expert-parallel ways to try, MoE models only "
                                  "(as simulate's --ep) [default: 1]."),
    max_num_seqs: str | None = typer.Option(None, "--max-num-seqs", help="e.g. 128,256"),
    max_num_batched_tokens: str | None = typer.Option(None, "--max-num-batched-tokens", help="e.g. 2048,8192"),
    weight_dtypes: str | None = typer.Option(None, "--weight-dtypes", help="e.g. bf16,fp8"),
    kv_dtypes: str | None = typer.Option(None, "--kv-dtypes", help="e.g. bf16,fp8"),
    policies: str | None = typer.Option(None, "--policies", help="Scheduler policies, e.g. vllm,sarathi"),
    disagg: bool | None = typer.Option(None, "--disagg/--no-disagg", help="Also try prefill/decode pools."),
    max_pool: int | None = typer.Option(None, "--max-pool", help="Largest prefill or decode pool [default: 4]."),
    hetero_stages: str | None = typer.Option(None, "--hetero-stages", help="Also price pipelines with one "
                                             "stage per device, e.g. h100_sxm+l40s (comma-separated chains; "
                                             "analytic stage model, not simulated)."),
    attention_offload: str | None = typer.Option(None, "--attention-offload", help="Also price attention "
                                                 "offload DENSE+ATTENTION, e.g. h100_sxm+l40s: attention and KV "
                                                 "on the second device (analytic stage model, not simulated)."),
    hetero_link: str | None = typer.Option(None, "--hetero-link", help="Link between a heterogeneous "
                                           "replica's devices, e.g. 400Gbps@5us [default: their inter-node "
                                           "figures]."),
    rate: float | None = typer.Option(None, "--rate", "-r", help="Fixed request rate to serve at least cost "
                                      "[default: each plan at its highest rate under the SLO]."),
    objective: str = typer.Option("cost,ttft,tpot,energy", "--objective",
                                  help="Objectives of the front: cost, ttft, tpot, energy, devices."),
    requests: int = typer.Option(1000, "--requests", "-n", min=20, help="Requests of the trace to simulate."),
    search: str = typer.Option("auto", "--search", help="grid (every plan), nsga2 (optuna NSGA-II) or auto "
                               "(grid unless the space needs > 800 engine evaluations)."),
    trials: int = typer.Option(300, "--trials", min=1, help="NSGA-II trials."),
    executor: str = typer.Option("local", "--executor", help="local (process pool), serial or ray."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Parallel evaluations [default: CPU count]."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Address of a running Ray cluster."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Simulate the recommended plan whole."),
    profile: list[str] | None = typer.Option(None, "--profile", help="Calibrated profile for its device "
                                             "(repeatable); other devices use the datasheet roofline."),
    out: Path = typer.Option(Path("runs/plan"), "--out", "-o", help="Output folder."),
) -> None:
    """Search deployment plans: the Pareto front of cost, latency and energy, and a recommendation."""
    from paretoserve.metrics.slo import parse_slo
    from paretoserve.plan.space import SearchSpace
    from paretoserve.planning import plan

    overrides = {"devices": _words(hardware), "max_devices": budget, "max_usd_per_hour": budget_usd,
                 "tp": _ints(tp, "--tp"), "pp": _ints(pp, "--pp"),
                 "dp_attention": _ints(dp_attention, "--dp-attention"), "ep": _ints(ep, "--ep"),
                 "max_num_seqs": _ints(max_num_seqs, "--max-num-seqs"),
                 "max_num_batched_tokens": _ints(max_num_batched_tokens, "--max-num-batched-tokens"),
                 "weight_dtypes": _words(weight_dtypes), "kv_dtypes": _words(kv_dtypes),
                 "policies": _words(policies), "disagg": disagg, "max_pool_replicas": max_pool,
                 "hetero_stages": _chains(hetero_stages), "attention_offload": _chains(attention_offload),
                 "hetero_link": hetero_link}
    if space_file is not None:
        space = SearchSpace.from_yaml(space_file, **overrides)
    else:
        fields = {k: v for k, v in overrides.items() if v is not None}
        fields.setdefault("devices", ["h100_sxm"])
        space = SearchSpace.build(fields, source="flags")
    with Progress(TextColumn("evaluating engines"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("units", total=None)
        result = plan(model, trace=trace, slo=parse_slo(slo), space=space, out=out, requests=requests,
                      rate=rate, objectives=tuple(_words(objective) or ()), executor=executor,
                      workers=workers, ray_address=ray_address, verify=verify, profiles=profile,
                      search=search, trials=trials,
                      progress=lambda done, total: bar.update(task, completed=done, total=total))
    _print(result)


def _print(result: PlanResult) -> None:
    outcome = result.outcome
    table = compact_table(f"Pareto front ({len(outcome.front)} of {len(outcome.rows)} plans; "
                          f"{outcome.units} engine evaluations; p90 latencies) — estimated by simulation")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("plan")  # wraps between the words of a label, never inside one
    for col in ("GPUs", "req/s", "$/M\nout", "$/M\nall", "TTFT\nms", "TPOT\nms", "J/\ntok", ""):
        table.add_column(col, justify="right", no_wrap=True)
    front = outcome.front[:25]
    for i, row in enumerate(front, 1):
        marks = " ".join(m for m, on in (("★", row["recommended"]), ("knee", row["knee"])) if on)
        table.add_row(str(i), _label(row, front), str(row["devices"]), f"{row['max_rate_rps']:.2f}",
                      f"{row['usd_per_million_tokens']:.3f}", f"{row['usd_per_million_total_tokens']:.3f}",
                      _ms(row["ttft_p90_s"]), _ms(row["tpot_p90_s"]), f"{row['joules_per_token']:.2f}", marks)
    console.print(table)
    for note in outcome.enumeration.notes:
        console.print(f"note: {note}", highlight=False)
    console.print("[dim]$/M out, all: dollars per million output tokens, and per million prompt + output "
                  "tokens; J/tok: joules per output token; ★ recommended (cheapest per output token meeting "
                  "the SLO); knee: the front's best compromise[/]")
    _print_devices(outcome.by_device)
    best = outcome.recommended
    if best is None:
        console.print("[yellow]No plan meets the SLO at any rate; relax the SLO or add faster devices.[/]")
    else:
        console.print(f"[bold]Recommended:[/] {best['label']}")
        console.print(str(best["reason"]))
        for verification in result.verifications:
            console.print(_verification_line(verification), highlight=False)
        if not result.verifications:
            console.print("Not verified (--no-verify): the figures above are the planner's estimates.")
        elif not result.verified or not result.verified["met"]:
            console.print(f"[bold red]No plan was verified to meet the SLO:[/] the {len(result.verifications)} "
                          "cheapest plans missed its attainment target when simulated whole; the "
                          "recommendation above is the planner's estimate only.")
        console.print(f"reproduce: [cyan]{best['command']}[/]", soft_wrap=True)
    console.print(f"report: {result.report}   front: {result.out_dir / 'front.csv'}   "
                  f"plans: {result.out_dir / 'plans.jsonl'}", soft_wrap=True)


def _verification_line(v: dict[str, object]) -> str:
    """`verification_sentence` with its verdict coloured."""
    from rich.markup import escape

    from paretoserve.plan.api import verification_sentence

    verdict, sep, rest = verification_sentence(v).partition(": ")
    return f"[{'green' if v['met'] else 'red'}]{escape(verdict)}{sep}[/]{escape(rest)}"


def _print_devices(by_device: list[dict[str, object]]) -> None:
    """Each requested device type: its best plan (estimated), or why it has none."""
    console.print("By device type (best plan estimated to meet the SLO, or why there is none):")
    for entry in by_device:
        if entry["best"] is None:
            console.print(f"  {entry['device']}: [yellow]no plan[/] — {entry['reason']}", highlight=False)
        else:
            console.print(f"  {entry['device']}: {entry['best']}, ${float(entry['usd_per_million_tokens']):.3f}"
                          f"/Mtok, up to {float(entry['max_rate_rps']):.2f} req/s", highlight=False)


def _label(row: dict[str, object], rows: list[dict[str, object]]) -> str:
    """The plan's label, without the batching limits when every listed plan shares them (the
    table stays readable in a narrow terminal; plans.jsonl and the report keep the full label)."""
    shared = {(r["plan"]["max_num_seqs"], r["plan"]["max_num_batched_tokens"]) for r in rows}  # type: ignore[index]
    label = str(row["label"])
    return re.sub(r" seqs\d+ mbt\d+", "", label) if len(shared) == 1 else label


def _ms(value: object) -> str:
    return "—" if value is None else f"{float(value) * 1e3:.0f}"
