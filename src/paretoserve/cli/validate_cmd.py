"""`paretoserve validate`: replay a measured run through the simulator, predicted next to measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from paretoserve.cli import replay_options
from paretoserve.cli.app import app, console
from paretoserve.errors import UserError


@app.command("validate")
def validate_cmd(
    measured: Annotated[Path | None, typer.Option(
        "--measured", help="Measured run: a run folder (bench, import-vllm) or a raw vLLM run folder "
                           "(requests.jsonl + meta.json) or result file, imported on the fly.")] = None,
    points: Annotated[Path | None, typer.Option(
        "--points", help="Measured serving points, a CSV in AIC's silicon_sample.csv schema (e.g. "
                         "shared/data/silicon/h100_sxm_silicon.csv): each row is predicted as the closed "
                         "loop it was measured with.")] = None,
    where: str | None = typer.Option(None, "--where", help="With --points: only rows with these column "
                                                           "values, e.g. 'backend=vllm,model=Qwen/Qwen3-32B'."),
    steady_state: bool = typer.Option(
        False, "--steady-state", help="With --points: replay each row as the plain steady-state closed loop "
                                      "(5C requests, first 2C and last C left out) instead of as collected "
                                      "(aiperf: 2C warm-up drained, 20C measured, ramp-up and drain in the mean)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON (for scripts)."),
    profile: Annotated[Path | None, typer.Option(
        "--profile", help="Profile of the run's device (default: the datasheet roofline).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the predicted run here (a run folder) with report.html comparing "
                            "the two; with --points: predictions.csv, summary.json and report.html.")] = None,
    model: str | None = typer.Option(None, "--model", "-m", help="The served model, if the run does not "
                                                                 "record it."),
    hardware: str | None = typer.Option(None, "--hardware", "-H", help="The run's device, if not recorded."),
    tp: int | None = typer.Option(None, "--tp", help="Tensor-parallel degree of the run."),
    pp: replay_options.Pp = None,
    dp: replay_options.Dp = None,
    expert_parallel: replay_options.ExpertParallel = None,
    kv_dtype: replay_options.KvDtype = None,
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="The engine's sequence cap."),
    max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens",
                                                      help="The engine's token budget per iteration."),
    kv_tokens: int | None = typer.Option(None, "--kv-tokens", help="KV-cache capacity in tokens."),
) -> None:
    """Predict a measured run (same arrivals, lengths, engine settings), or a table of measured serving
    points, and print the errors."""
    if (measured is None) == (points is None):
        raise UserError("give one of --measured RUN_FOLDER or --points FILE.csv")
    if points is not None:
        from paretoserve.cli.points_cmd import validate_points

        validate_points(points, where=where, profile=profile, out=out, as_json=as_json, steady_state=steady_state)
        return
    if where is not None or steady_state:
        raise UserError(f"{'--where' if where is not None else '--steady-state'} applies to --points rows; "
                        "a --measured run is replayed whole, as measured",
                        field="where" if where is not None else "steady-state")
    import importlib.metadata

    from paretoserve.calibrate.run_fit import compare_table, run_fingerprint, run_setup, simulate_setup, step_model_for
    from paretoserve.cli.calibrate_cmd import comparison_table
    from paretoserve.cli.measured import import_note, read_measured
    from paretoserve.outputs import claim_folder
    from paretoserve.perf.calibrated import Coefficients
    from paretoserve.perf.profile import load_profile
    from paretoserve.runs import RunWriter, read_run

    inputs = (measured, profile)
    if out is not None:  # before the replay: never into (or over) the measured run
        claim_folder(out, "validate", inputs=inputs)
    run, imported = read_measured(measured)
    if imported and not as_json:
        console.print(import_note(measured))
    setup = run_setup(run, model=model, hardware=hardware, tp=tp, pp=pp, dp=dp, expert_parallel=expert_parallel,
                      kv_dtype=kv_dtype, max_num_seqs=max_num_seqs,
                      max_num_batched_tokens=max_num_batched_tokens, kv_tokens=kv_tokens)
    prof = load_profile(profile, device=setup.device.name) if profile is not None else None
    coefficients = prof.coefficients if prof else Coefficients()
    step = step_model_for(setup, prof.kernels if prof else None, coefficients)
    predicted = simulate_setup(setup, step)
    pairs = compare_table(predicted, setup.measured.values())
    what = f"profile {profile}" if profile else "datasheet roofline (no --profile)"
    fitted = (prof.fit.get("run") or {}) if prof else {}
    same_run = fitted.get("run_fingerprint") == run_fingerprint(setup)
    if as_json:
        def finite(value: float) -> float | None:
            return value if value == value else None  # NaN (no samples) -> null

        latency = {m: {stat: {"predicted": finite(p), "measured": finite(v)} for stat, (p, v) in stats.items()}
                   for m, stats in pairs.items()}
        typer.echo(json.dumps({"estimated": True, "measured_run": str(measured), "step_model": what,
                               "profile_fitted_on_this_run": same_run,
                               "replay": setup.settings(), "replay_sources": setup.notes, "latency_s": latency}))
    else:
        console.print(f"replayed {len(setup.requests):,} measured requests of {measured} as "
                      f"{setup.model.name} on "
                      f"{setup.device.name} (tp={setup.tp}, max_num_seqs={setup.max_num_seqs}, "
                      f"max_num_batched_tokens={setup.max_num_batched_tokens}, kv_tokens={setup.kv_tokens:,}) "
                      f"with the {what}")
        title = "Predicted vs measured (error = (predicted − measured) / measured)"
        console.print(comparison_table(title, pairs))
        if same_run:
            fit_requests = int(fitted.get("fit_requests") or len(setup.requests))
            held = {q.request_id for q in setup.requests[fit_requests:]}
            console.print(f"[yellow]This profile was fitted on this run: on the first {fit_requests:,} of its "
                          f"{len(setup.requests):,} requests by arrival; the table above includes them.[/]")
            if held:
                console.print(comparison_table(f"Held-out requests only (the later {len(held):,}, not used by "
                                               "the fit): predicted vs measured",
                                               compare_table(predicted, setup.measured.values(), held)))
            else:
                console.print("[yellow]Not a validation: every request was used by the fit, so these errors "
                              "are the fit's own; validate on another run.[/]")
        if not any(r.itl_s for r in setup.measured.values()):
            console.print("[dim]ITL: the measured run records no per-token gaps; compare TPOT instead.[/]")
    if out is None:
        return
    config = {"command": "validate", "paretoserve_version": importlib.metadata.version("paretoserve"),
              "measured": str(measured), "profile": str(profile) if profile else None,
              "profile_fitted_on_this_run": same_run,
              "replay": setup.settings(), "replay_sources": setup.notes}
    with RunWriter(out, config, keep_partial=False, flush_every=4096, estimated=True, inputs=inputs) as writer:
        for record in predicted:
            writer.add(record)
    from paretoserve.report.html import runs_report

    page = runs_report([run, read_run(out)], title=f"Validation of {measured.name}",
                       out_path=out / "report.html")
    if not as_json:
        console.print(f"wrote {out} (predicted run) and {page}")
