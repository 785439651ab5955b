"""`paretoserve calibrate`: fit a profile from measured kernel tables (or transfer one to a new device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from paretoserve.cli import replay_options
from paretoserve.cli.app import app, console
from paretoserve.errors import UserError

if TYPE_CHECKING:
    from paretoserve.perf.profile import Profile

_KIND_NAMES = {"gemm": "GEMM", "context_attention": "context attention",
               "generation_attention": "generation attention", "allreduce": "all-reduce",
               "mla_context": "MLA context", "mla_generation": "MLA generation"}


@app.command("calibrate")
def calibrate_cmd(
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="Profile to write (.yaml; its grids go next to it).")],
    kernels: Annotated[Path | None, typer.Option(
        "--kernels", "-k",
        help="Folder of kernel tables: one device's folder of shared/data/kernels "
             "(gemm/<engine>/<version>/...) or a flat folder of *_perf.parquet files.")] = None,
    from_run: Annotated[Path | None, typer.Option(
        "--from", help="Measured run to fit global coefficients: a run folder (bench, import-vllm) or a raw "
                       "vLLM run folder (requests.jsonl + meta.json) or result file, imported on the fly.")] = None,
    hardware: str | None = typer.Option(
        None, "--hardware", "-H",
        help="Catalog device (or device YAML) the tables or the run were measured on (default: the one "
             "they record)."),
    device: str | None = typer.Option(None, "--device", hidden=True, help="Old name of --hardware."),
    version: str | None = typer.Option(None, "--version",
                                       help="Engine version folder to use (default: the newest)."),
    engine: str = typer.Option("vllm", "--engine", help="Engine folder name in the kernel-table layout."),
    transfer_from: Annotated[Path | None, typer.Option(
        "--transfer-from",
        help="Reference profile of another device: fit this device from it plus --points of the "
             "tables.")] = None,
    points: int = typer.Option(10, "--points", min=1, help="Measured points used by --transfer-from."),
    seed: int = typer.Option(0, "--seed", help="Seed of the point choice for --transfer-from."),
    quick: bool = typer.Option(False, "--quick", help="Skip the leave-one-out fit report."),
    profile: Annotated[Path | None, typer.Option(
        "--profile", help="With --from: start from this (kernel) profile of the run's device.")] = None,
    fit_fraction: float | None = typer.Option(
        None, "--fit-fraction",
        help="With --from: fit on this first fraction of the requests (by arrival) and report the error "
             "on the rest; 1 fits on all (nothing held out) [default: 0.5, the first half]."),
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="With --from: the served model, if the run does not record it."),
    tp: int | None = typer.Option(None, "--tp", help="With --from: tensor-parallel degree of the run."),
    pp: replay_options.Pp = None,
    dp: replay_options.Dp = None,
    expert_parallel: replay_options.ExpertParallel = None,
    kv_dtype: replay_options.KvDtype = None,
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="With --from: the engine's cap."),
    max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens",
                                                      help="With --from: the engine's token budget."),
    kv_tokens: int | None = typer.Option(None, "--kv-tokens",
                                         help="With --from: KV-cache capacity in tokens of the run."),
) -> None:
    """Fit per-kernel efficiencies (GEMM, attention, all-reduce) and write a profile for --profile."""
    from paretoserve.calibrate import calibrate_kernels, transfer_profile
    from paretoserve.perf.profile import claim_profile_path, load_profile, save_profile

    hardware = hardware or device
    inputs = (kernels, from_run, transfer_from, profile)
    claim_profile_path(out, inputs=inputs)  # before the fit: never over an input or a user's file
    if from_run is not None:
        if kernels is not None:
            raise UserError("give either --kernels DIR or --from RUN, not both")
        _calibrate_run(from_run, out, profile, fit_fraction, model=model, hardware=hardware, tp=tp, pp=pp, dp=dp,
                       expert_parallel=expert_parallel, kv_dtype=kv_dtype, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_num_batched_tokens, kv_tokens=kv_tokens)
        return
    if kernels is None:
        raise UserError("give --kernels DIR (measured kernel tables) or --from RUN (a measured run folder)")
    if transfer_from is not None:
        reference = load_profile(transfer_from)
        profile = transfer_profile(reference, kernels, hardware, points=points, seed=seed, version=version,
                                   framework=engine)
    else:
        profile = calibrate_kernels(kernels, hardware, version=version, framework=engine, quality=not quick)
    path = save_profile(profile, out, inputs=inputs)
    print_fit_quality(profile)
    engine_text = f"{profile.engine} {profile.engine_version}".strip() or "engine unknown"
    console.print(f"wrote {path} (device {profile.device}, {engine_text})")


def print_fit_quality(profile: Profile) -> None:
    """The fit-quality table of a freshly fitted profile."""
    if not profile.fit:
        return
    transfer = profile.kind == "transfer"
    if transfer:
        t = profile.transfer or {}
        title = (f"Transfer from {t.get('reference')} — ln e = a + {t.get('slope', 0):.3f}·ln e_ref; "
                 "error on the held-out measured points")
        cols = ("kernel", "points used", "held-out", "median", "p90", "datasheet median", "datasheet p90")
    else:
        title = "Fit quality: leave-one-out error (each point predicted without itself)"
        cols = ("kernel", "points", "LOO median", "LOO p90", "datasheet median", "datasheet p90")
    table = Table(title=title, title_justify="left")
    for col in cols:
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for kind, q in profile.fit.items():
        name = _KIND_NAMES.get(kind, kind)
        if transfer:
            table.add_row(name, str(q["points_used"]), f"{q['heldout_points']:,}",
                          f"{q['heldout_median']:.1%}", f"{q['heldout_p90']:.1%}",
                          f"{q['datasheet_median']:.1%}", f"{q['datasheet_p90']:.1%}")
        else:
            table.add_row(name, f"{q['points']:,}", f"{q['loo_median']:.1%}", f"{q['loo_p90']:.1%}",
                          f"{q.get('datasheet_median', float('nan')):.1%}",
                          f"{q.get('datasheet_p90', float('nan')):.1%}")
    console.print(table)


def _calibrate_run(run_dir: Path, out: Path, base: Path | None, fit_fraction: float | None,
                   **overrides: object) -> None:
    """`calibrate --from RUN`: fit the global coefficients to a measured run and write a profile."""
    from paretoserve.calibrate.run_fit import DEFAULT_FIT_FRACTION, fit_run, run_fingerprint, run_setup, split_ids
    from paretoserve.cli.measured import import_note, read_measured
    from paretoserve.perf.profile import Profile, load_profile, save_profile

    fit_fraction = DEFAULT_FIT_FRACTION if fit_fraction is None else fit_fraction
    run, imported = read_measured(run_dir)
    if imported:
        console.print(import_note(run_dir))
    setup = run_setup(run, **overrides)  # type: ignore[arg-type]
    start = load_profile(base, device=setup.device.name) if base is not None else None
    fit_requests = len(split_ids(setup, fit_fraction)[0])
    with console.status("fitting coefficients (simulating the run)...") as status:
        result = fit_run(setup, kernels=start.kernels if start else None,
                         start=start.coefficients if start else None, fit_fraction=fit_fraction,
                         progress=lambda n, loss: status.update(f"simulation {n}: loss {loss:.4g}"))
    engine = run.config.get("engine") or {}
    profile = Profile(
        device=setup.device.name, kind="run",
        engine="vllm" if engine.get("vllm_version") else (start.engine if start else ""),
        engine_version=str(engine.get("vllm_version") or (start.engine_version if start else "")),
        source=f"run {run_dir}" + (f" on top of {base}" if base else ""),
        coefficients=result.coefficients, kernels=start.kernels if start else {},
        fit={"run": {"replay": setup.settings(), "fit_fraction": fit_fraction, "run": str(run_dir),
                     "run_fingerprint": run_fingerprint(setup), "requests": len(setup.requests),
                     "fit_requests": fit_requests,
                     "evaluations": result.evaluations,
                     "loss_start": round(result.loss_start, 6), "loss": round(result.loss, 6),
                     "fit": _rounded(result.fit), "heldout": _rounded(result.heldout)}},
        notes="global coefficients fitted end to end: simulated TTFT/TPOT/E2E (mean, p50, p90) of the "
              "fitting requests matched to the measured ones")
    path = save_profile(profile, out, inputs=(run_dir, base))
    c = result.coefficients
    console.print(f"replayed {len(setup.requests):,} requests of {run_dir} as {setup.model.name} on "
                  f"{setup.device.name} (tp={setup.tp}, max_num_seqs={setup.max_num_seqs}, "
                  f"max_num_batched_tokens={setup.max_num_batched_tokens}, kv_tokens={setup.kv_tokens:,}); "
                  f"{result.evaluations} simulations")
    console.print(f"coefficients: compute ×{c.compute_scale:.3f}, memory ×{c.memory_scale:.3f}, "
                  f"{c.step_overhead_s * 1e3:.3f} ms per iteration, "
                  f"{c.token_overhead_s * 1e6:.3f} µs per token")
    console.print(comparison_table("Fitting requests: before → after calibration", result.fit, result.start))
    held = len(setup.requests) - fit_requests
    if result.heldout:
        console.print(comparison_table(f"Held-out requests (the later {held:,} by arrival, not used by the fit): "
                                       "predicted vs measured", result.heldout))
    else:
        console.print(f"[yellow]fitted on all {len(setup.requests):,} requests: nothing held out, so no error on "
                      "unseen requests is reported (--fit-fraction below 1 holds the later ones out)[/]")
    console.print(f"wrote {path}")


def _rounded(table: dict) -> dict:
    return {m: {s: [round(p, 6), round(q, 6)] for s, (p, q) in stats.items()} for m, stats in table.items()}


def comparison_table(title: str, pairs: dict, before: dict | None = None) -> Table:
    """Predicted vs measured latency (ms) with the signed error, per metric and statistic."""
    table = Table(title=title, title_justify="left")
    cols = ["metric", "stat", "measured ms", *(("before ms", "error") if before else ()),
            "predicted ms", "error"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("metric", "stat") else "right")
    for metric, stats in pairs.items():
        for stat, (pred, meas) in stats.items():
            row = [metric.upper(), stat, _ms(meas)]
            if before:
                old = before.get(metric, {}).get(stat, (float("nan"), meas))[0]
                row += [_ms(old), _signed(old, meas)]
            row += [_ms(pred), _signed(pred, meas)]
            table.add_row(*row)
    return table


def _ms(value: float) -> str:
    return "—" if value != value else f"{value * 1e3:,.1f}"


def _signed(pred: float, meas: float) -> str:
    if pred != pred or meas != meas or meas == 0:
        return "—"
    return f"{(pred - meas) / meas:+.1%}"
