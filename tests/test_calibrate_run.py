"""End-to-end calibration (`calibrate --from RUN`) and `validate` against runs with known answers.

A run is simulated here with known global coefficients and written as a run folder; calibrating
on it must give back coefficients that reproduce its latencies (and the compute scale itself).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from paretoserve.calibrate.run_fit import RunSetup, fit_run, run_setup, simulate_setup
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.perf.calibrated import Calibrated, Coefficients
from paretoserve.perf.profile import load_profile
from paretoserve.runs import RunWriter, read_run
from paretoserve.workload.request import Request

KNOWN = Coefficients(compute_scale=0.7, memory_scale=0.8, step_overhead_s=2e-3, token_overhead_s=1e-6)
SETTINGS = {"model": "Meta-Llama-3.1-8B", "hardware": "h100_sxm", "tp": 1, "pp": 1, "max_num_seqs": 64,
            "max_num_batched_tokens": 2048, "block_size": 16, "prefix_caching": True, "kv_tokens": 60000}


def _requests(n: int = 120, rate: float = 6.0, seed: int = 1) -> list[Request]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    return [Request(f"r{i}", float(a), int(rng.integers(100, 3000)), int(rng.integers(20, 400)))
            for i, a in enumerate(arrivals)]


def _known_run(folder, seed: int = 1):
    """A run folder 'measured' by the simulator with KNOWN coefficients."""
    model, device = load_model(SETTINGS["model"]), load_device(SETTINGS["hardware"])
    setup = RunSetup(model, device, 1, 1, SETTINGS["kv_tokens"], 16, 64, 2048, True, _requests(seed=seed), {})
    records = simulate_setup(setup, Calibrated(model, device, coefficients=KNOWN))
    with RunWriter(folder, {"command": "simulate", "simulate": SETTINGS}, keep_partial=False) as writer:
        for record in records:
            writer.add(record)
    return folder


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    return _known_run(tmp_path_factory.mktemp("runs") / "known")


def test_calibrate_recovers_a_run_simulated_with_known_coefficients(known_run):
    setup = run_setup(read_run(known_run))
    assert setup.settings() == {**SETTINGS, "dp": 1, "kv_dtype": "bf16"}
    result = fit_run(setup, max_evaluations=200)
    for metric, stats in result.fit.items():
        for stat, (predicted, measured) in stats.items():
            assert predicted == pytest.approx(measured, rel=0.03), (metric, stat)
    assert result.loss < 0.1 * result.loss_start
    # prefill work pins the compute scale; memory scale and per-iteration overhead trade off
    assert result.coefficients.compute_scale == pytest.approx(KNOWN.compute_scale, rel=0.1)


def test_held_out_half_is_predicted(known_run):
    result = fit_run(run_setup(read_run(known_run)), fit_fraction=0.5, max_evaluations=120)
    assert result.heldout
    for metric in ("ttft", "tpot", "e2e"):
        for stat in ("mean", "p90"):
            predicted, measured = result.heldout[metric][stat]
            assert predicted == pytest.approx(measured, rel=0.05), (metric, stat)


def test_run_without_timestamps_is_a_one_line_error(tmp_path):
    folder = tmp_path / "bare"
    with RunWriter(folder, {"command": "bench", "model": "Meta-Llama-3.1-8B"}, keep_partial=False) as writer:
        from paretoserve.metrics.records import RequestRecord

        writer.add(RequestRecord("a", 0.0, 10, 5))
    with pytest.raises(UserError) as info:
        run_setup(read_run(folder), hardware="h100_sxm")
    assert "first/last-token timestamps" in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["calibrate", "--from", str(folder), "--hardware", "h100_sxm",
                                      "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2 and "timestamps" in result.output and "Traceback" not in result.output


def test_unknown_hardware_needs_the_flag(tmp_path, known_run):
    run = read_run(known_run)
    run.config = {"command": "bench", "model": "Meta-Llama-3.1-8B"}
    with pytest.raises(UserError, match="pass --hardware"):
        run_setup(run)


def test_cli_calibrate_from_run_then_validate(tmp_path, known_run):
    """By default calibrate fits on the first half by arrival and reports the second; validate on the
    same run says so and shows the held-out half alone."""
    out = tmp_path / "profiles" / "run.yaml"
    result = CliRunner().invoke(app, ["calibrate", "--from", str(known_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Held-out requests (the later 60 by arrival" in result.output
    profile = load_profile(out, device="h100_sxm")
    assert profile.kind == "run" and profile.coefficients != Coefficients()
    fitted = profile.fit["run"]
    assert fitted["replay"]["model"] == "Meta-Llama-3.1-8B"
    assert fitted["fit_fraction"] == 0.5 and fitted["fit_requests"] == 60 and fitted["requests"] == 120
    assert set(fitted["heldout"]) >= {"ttft", "tpot", "e2e"}
    report = tmp_path / "validated"
    result = CliRunner().invoke(app, ["validate", "--measured", str(known_run), "--profile", str(out),
                                      "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert "TTFT" in result.output and "TPOT" in result.output and "E2E" in result.output
    assert "fitted on this run: on the first 60 of its 120 requests" in result.output
    assert "Held-out requests only (the later 60" in result.output
    assert yaml.safe_load((report / "config.yaml").read_text())["profile_fitted_on_this_run"] is True
    assert (report / "report.html").is_file() and (report / "requests.jsonl").is_file()
    # another run (other arrivals and lengths) is a validation: nothing to say
    other = _known_run(tmp_path / "other", seed=2)
    result = CliRunner().invoke(app, ["validate", "--measured", str(other), "--profile", str(out)])
    assert result.exit_code == 0, result.output
    assert "fitted on this run" not in result.output and "Held-out requests only" not in result.output
    # a profile of another device is refused
    result = CliRunner().invoke(app, ["validate", "--measured", str(known_run), "--profile", str(out),
                                      "--hardware", "a100_sxm"])
    assert result.exit_code == 2 and "fitted for h100_sxm, not a100_sxm" in result.output


def test_fit_on_all_is_not_called_a_validation(tmp_path, known_run):
    out = tmp_path / "all.yaml"
    result = CliRunner().invoke(app, ["calibrate", "--from", str(known_run), "--fit-fraction", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fitted on all 120 requests: nothing held out" in result.output
    assert "Held-out requests" not in result.output
    assert load_profile(out).fit["run"]["fit_requests"] == 120
    result = CliRunner().invoke(app, ["validate", "--measured", str(known_run), "--profile", str(out)])
    assert result.exit_code == 0, result.output
    assert "Not a validation: every request was used by the fit" in result.output
