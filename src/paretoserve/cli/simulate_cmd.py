"""`paretoserve simulate`: replay a trace (or a synthetic workload) through a simulated deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from paretoserve.cli.app import app, console
from paretoserve.errors import UserError

if TYPE_CHECKING:
    from paretoserve.metrics.summary import Summary

#: The names of `sim.schedulers.POLICIES`, for the help text (importing the simulator would
#: slow every command's start-up; tests/test_cli_vocabulary.py checks the two agree).
POLICY_NAMES = ("vllm", "orca", "sarathi", "priority", "slo", "lengthaware", "sglang", "trtllm")


def _policy_options(items: list[str]) -> dict[str, float]:
    """["chunk_size=256"] -> {"chunk_size": 256.0}."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            options[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise UserError(f"--policy-option {item!r}: expected KEY=NUMBER (e.g. chunk_size=256)",
                            field="policy-option")
    return options


@app.command("simulate")
def simulate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Bundled model name or path to a config.json."),
    hardware: str = typer.Option(..., "--hardware", "-H", help="Catalog device name or a device YAML."),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor-parallel devices per replica."),
    pp: int = typer.Option(1, "--pp", min=1, help="Pipeline-parallel stages per replica."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Data-parallel replicas."),
    dp_attention: int = typer.Option(1, "--dp-attention", min=1,
                                     help="Attention data-parallel ranks per replica (MoE spans them)."),
    ep: int = typer.Option(1, "--ep", min=1, help="Expert-parallel ways of the MoE layers."),
    moe_skew: float = typer.Option(1.0, "--moe-skew", help="Routing skew: factor on the busiest EP rank's load."),
    eplb_redundant: int = typer.Option(0, "--eplb-redundant", min=0, help="EPLB redundant experts (total)."),
    router: str = typer.Option("round_robin", "--router",
                               help="round_robin, least_outstanding or prefix_affinity."),
    disagg: str | None = typer.Option(None, "--disagg", help="Disaggregated pools, e.g. 2P1D."),
    prefill_tp: int | None = typer.Option(None, "--prefill-tp", min=1, help="TP of prefill replicas."),
    decode_tp: int | None = typer.Option(None, "--decode-tp", min=1, help="TP of decode replicas."),
    trace: str | None = typer.Option(None, "--trace", "-t",
                                     help="Bundled trace (azure-conv, azure-code, mooncake-conv) or a trace file."),
    rate: float | None = typer.Option(None, "--rate", "-r", help="Requests/s (rescales a trace)."),
    rate_scale: float | None = typer.Option(None, "--rate-scale", help="Factor on the trace's rate."),
    arrival: str = typer.Option("trace", "--arrival",
                                help="trace, poisson, gamma:CV, constant or ramp:START:END."),
    requests: int | None = typer.Option(None, "--requests", "-n", min=1, help="At most N requests."),
    duration: float | None = typer.Option(None, "--duration", help="Only arrivals before S seconds."),
    prompt: str | None = typer.Option(None, "--prompt",
                                      help="Prompt lengths: N, fixed:N, uniform:A:B or lognormal:MEAN:SIGMA."),
    output: str | None = typer.Option(None, "--output", help="Output lengths (same forms as --prompt)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic workload."),
    concurrency: int | None = typer.Option(
        None, "--concurrency", min=1,
        help="Alone: a closed loop of C users, each sending its next request when its previous one "
             "completes (like vllm bench serve --max-concurrency); needs --requests; the first 2C and "
             "last C completions (warm-up, cool-down) are left out of the summary (see --window). With "
             "--rate/--arrival: at most C in flight."),
    warmup: int = typer.Option(
        0, "--warmup", min=0,
        help="Closed loop: N warm-up requests first, drained before the --requests measured ones start "
             "(all C users at once) and never summarised, like aiperf --warmup-request-count N."),
    window: str = typer.Option(
        "steady", "--window",
        help="Closed loop: which measured requests are summarised: steady (leave out the first 2C and "
             "last C completions) or all (ramp-up and drain included, as aiperf reports a run)."),
    policy: str = typer.Option("vllm", "--policy", help=f"Scheduling policy: {', '.join(POLICY_NAMES)}."),
    policy_option: Annotated[list[str] | None,
                             typer.Option("--policy-option", help="KEY=NUMBER, repeatable.")] = None,
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1),
    max_num_batched_tokens: int = typer.Option(8192, "--max-num-batched-tokens", min=1),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization"),
    kv_tokens: int | None = typer.Option(None, "--kv-tokens", min=1,
                                         help="KV tokens per replica (overrides the memory model)."),
    block_size: int | None = typer.Option(None, "--block-size", min=1,
                                          help="Tokens per KV block (default: the policy's; vllm 16, "
                                               "sglang 1, trtllm 32)."),
    no_prefix_caching: bool = typer.Option(False, "--no-prefix-caching"),
    weight_dtype: str | None = typer.Option(None, "--weight-dtype", help="bf16, fp8, int8, int4, fp4."),
    kv_dtype: str | None = typer.Option(None, "--kv-dtype", help="bf16, fp8, int8."),
    profile: str | None = typer.Option(None, "--profile", help="Calibrated profile (YAML) for the hardware."),
    slo: str | None = typer.Option(None, "--slo", help="e.g. ttft_p90=2s,tpot_p90=80ms."),
    iteration_trace: bool = typer.Option(False, "--iteration-trace", help="Also write iterations.csv."),
    step_by_step: bool = typer.Option(False, "--step-by-step",
                                      help="Simulate every iteration (reference mode, slower)."),
    speculative: str | None = typer.Option(
        None, "--speculative", help="Speculative decoding: mtp, eagle (heads priced as one extra target "
                                    "layer per drafted token) or draft:MODEL (a catalog draft model)."),
    num_speculative_tokens: int | None = typer.Option(None, "--num-speculative-tokens",
                                                      help="K: tokens drafted per step."),
    acceptance_length: float | None = typer.Option(
        None, "--acceptance-length", help="Mean tokens emitted per verify step, accepted + 1, in [1, K+1]."),
    acceptance_rate: float | None = typer.Option(
        None, "--acceptance-rate", help="Per-position acceptance α in [0, 1); mean length (1-α^(K+1))/(1-α)."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder to write."),
) -> None:
    """Simulate serving a workload; writes a run folder and prints the summary."""
    from pydantic import ValidationError

    from paretoserve.report.tables import print_summary
    from paretoserve.sim.api import simulate_run
    from paretoserve.sim.run_config import SimulateConfig

    try:
        config = SimulateConfig(
            model=model, hardware=hardware, tp=tp, pp=pp, dp_attention=dp_attention, ep=ep, moe_skew=moe_skew,
            eplb_redundant=eplb_redundant, replicas=replicas, router=router, disagg=disagg,
            prefill_tp=prefill_tp, decode_tp=decode_tp, trace=trace, arrival=arrival, rate=rate,
            rate_scale=rate_scale, requests=requests, duration_s=duration, prompt=prompt, output=output,
            seed=seed, concurrency=concurrency, warmup=warmup, window=window, policy=policy,
            policy_options=_policy_options(policy_option or []),
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization, kv_tokens=kv_tokens, block_size=block_size,
            prefix_caching=not no_prefix_caching, weight_dtype=weight_dtype, kv_dtype=kv_dtype, profile=profile,
            slo=slo, iteration_trace=iteration_trace, fast=not step_by_step, speculative=speculative,
            num_speculative_tokens=num_speculative_tokens, acceptance_length=acceptance_length,
            acceptance_rate=acceptance_rate)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(first["msg"], field=".".join(str(part) for part in first["loc"])) from None
    with Progress(SpinnerColumn(), TextColumn("[bold]simulating[/]"), BarColumn(),
                  TextColumn("{task.fields[sim_s]:,.1f} s simulated · {task.completed:,} requests"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("simulate", total=requests, sim_s=0.0)

        def progress(simulated_s: float, done: int) -> None:
            bar.update(task, completed=done, sim_s=simulated_s)

        summary = simulate_run(config, out, progress=progress)
    print_summary(summary, title=f"{config.model} on {config.hardware} · {config.policy} · "
                                 f"{config.trace or 'synthetic'}", console=console)
    console.print(delivered_line(summary), highlight=False)
    console.print(f"[dim]run written to {out}[/]")


def delivered_line(summary: Summary) -> str:
    """'delivered X req/s over N requests': the rate the simulated requests arrived at."""
    rate = summary.delivered_rate_rps
    text = "an undefined rate" if rate is None else f"{rate:.4g} req/s"
    return f"delivered {text} over {summary.requests:,} requests ((N − 1) / (last − first arrival))"
