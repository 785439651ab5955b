"""`--profile` reaches the step-time model of estimate, simulate and plan."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.perf.calibrated import Coefficients
from paretoserve.perf.profile import Profile, save_profile
from paretoserve.perf.overhead import STEP_OVERHEAD_S

OVERHEAD_S = 0.010  # a per-iteration overhead large enough to see in every figure
EXTRA_S = OVERHEAD_S - STEP_OVERHEAD_S  # over the roofline's default per-iteration overhead


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "h100.yaml"
    save_profile(Profile(device="h100_sxm", kind="run", source="test",
                         coefficients=Coefficients(step_overhead_s=OVERHEAD_S)), path)
    return str(path)


def _estimate(*extra: str) -> dict:
    result = CliRunner().invoke(app, ["estimate", "-m", "Meta-Llama-3.1-8B", "-H", "h100_sxm", "--batch", "8",
                                      "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_estimate_with_profile_adds_the_fitted_overhead(profile):
    plain, calibrated = _estimate(), _estimate("--profile", profile)
    assert calibrated["step_model"].startswith("calibrated profile")
    assert calibrated["decode"]["seconds"] == pytest.approx(plain["decode"]["seconds"] + EXTRA_S, rel=0.05)


def test_simulate_with_profile_single_request(tmp_path, profile):
    # One request of 1 prompt chunk + 4 output tokens on an idle replica: 4 iterations after the
    # first token's, each EXTRA_S longer than the roofline's.
    runs = {}
    for name, extra in (("plain", []), ("calibrated", ["--profile", profile])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["simulate", "-m", "Meta-Llama-3.1-8B", "-H", "h100_sxm", "--arrival",
                                          "constant", "--rate", "0.01", "--requests", "1", "--prompt", "fixed:100",
                                          "--output", "fixed:5", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "requests.jsonl").read_text())
    e2e = {k: r["last_token_s"] - r["arrival_s"] for k, r in runs.items()}
    assert e2e["calibrated"] - e2e["plain"] == pytest.approx(5 * EXTRA_S, rel=0.05)


def test_profile_for_another_device_is_refused(profile):
    result = CliRunner().invoke(app, ["estimate", "-m", "Meta-Llama-3.1-8B", "-H", "a100_sxm", "--profile", profile])
    assert result.exit_code == 2
    assert "h100_sxm" in result.output and "Traceback" not in result.output
