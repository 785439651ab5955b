"""`paretoserve validate`: replay a measured run through the simulator, predicted next to measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from paretoserve.cli.app import app, console


@app.command("validate")
def validate_cmd(
    measured: Annotated[Path, typer.Option(
        "--measured", help="Measured run: a run folder (bench, import-vllm) or a raw vLLM run folder "
                           "(requests.jsonl + meta.json) or result file, imported on the fly.")],
    profile: Annotated[Path | None, typer.Option(
        "--profile", help="Profile of the run's device (default: the datasheet roofline).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the predicted run here (a run folder) with report.html comparing "
                            "the two.")] = None,
    model: str | None = typer.Option(None, "--model", "-m", help="The served model, if the run does not "
                                                                 "record it."),
    hardware: str | None = typer.Option(None, "--hardware", "-H", help="The run's device, if not recorded."),
    tp: int | None = typer.Option(None, "--tp", help="Tensor-parallel degree of the run."),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="The engine's sequence cap."),
    max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens",
                                                      help="The engine's token budget per iteration."),
    kv_tokens: int | None = typer.Option(None, "--kv-tokens", help="KV-cache capacity in tokens."),
) -> None:
    """Predict a measured run (same arrivals, lengths, engine settings) and print the errors."""
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
    if imported:
        console.print(import_note(measured))
    setup = run_setup(run, model=model, hardware=hardware, tp=tp, max_num_seqs=max_num_seqs,
                      max_num_batched_tokens=max_num_batched_tokens, kv_tokens=kv_tokens)
    prof = load_profile(profile, device=setup.device.name) if profile is not None else None
    coefficients = prof.coefficients if prof else Coefficients()
    step = step_model_for(setup, prof.kernels if prof else None, coefficients)
    predicted = simulate_setup(setup, step)
    pairs = compare_table(predicted, setup.measured.values())
    what = f"profile {profile}" if profile else "datasheet roofline (no --profile)"
    console.print(f"replayed {len(setup.requests):,} measured requests of {measured} as "
                  f"{setup.model.name} on "
                  f"{setup.device.name} (tp={setup.tp}, max_num_seqs={setup.max_num_seqs}, "
                  f"max_num_batched_tokens={setup.max_num_batched_tokens}, kv_tokens={setup.kv_tokens:,}) "
                  f"with the {what}")
    title = "Predicted vs measured (error = (predicted − measured) / measured)"
    console.print(comparison_table(title, pairs))
    fitted = (prof.fit.get("run") or {}) if prof else {}
    same_run = fitted.get("run_fingerprint") == run_fingerprint(setup)
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
            console.print("[yellow]Not a validation: every request was used by the fit, so these errors are "
                          "the fit's own; validate on another run.[/]")
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
    console.print(f"wrote {out} (predicted run) and {page}")
