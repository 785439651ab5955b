"""Outputs never lose a user's data (`paretoserve.outputs`): every command that writes refuses a
user's folder or file, the working folder, another command's output and its own inputs with one
line naming the path, leaving everything as it was; it replaces only its own earlier output."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.metrics.slo import parse_slo
from paretoserve.outputs import MARKER_FILE, building_folder, claim_folder
from paretoserve.perf.profile import Profile, load_profile, save_profile
from paretoserve.plan.api import plan
from paretoserve.plan.space import SearchSpace
from paretoserve.sim.api import simulate_run
from paretoserve.sim.run_config import SimulateConfig

MODEL = "Meta-Llama-3.1-8B"
SIMULATE = ["simulate", "--model", MODEL, "--hardware", "h100_sxm", "--trace", "azure-conv", "--requests", "12"]
PLAN = ["plan", "--model", MODEL, "--requests", "20", "--gpus", "h100_sxm", "--tp", "1", "--no-disagg",
        "--executor", "serial"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) → SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(result, path: Path | str, reason: str) -> None:
    """Exit code 2 and one error line that names `path` and says `reason`; no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(path) in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder of the user's own files (one hidden, one in a subfolder)."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / ".env").write_text("KEY=1\n")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


@pytest.fixture
def sim_run(tmp_path: Path) -> Path:
    """A run folder written by `simulate`."""
    out = tmp_path / "sim"
    result = invoke(*SIMULATE, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


# --- the measured cases ------------------------------------------------------------------------

def test_simulate_never_replaces_a_folder_of_user_files(user_folder: Path) -> None:
    before = snapshot(user_folder)
    assert_refused(invoke(*SIMULATE, "--out", str(user_folder)), user_folder, "is not a paretoserve output")
    assert snapshot(user_folder) == before
    assert sorted(p.name for p in user_folder.parent.iterdir()) == ["mine"]  # no temporary folder left


@pytest.mark.parametrize("out", [".", "CWD", "PARENT"])
def test_the_working_folder_and_its_ancestors_are_refused(tmp_path: Path, monkeypatch, out: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("\\documentclass{article}\n")
    monkeypatch.chdir(work)
    path = {".": ".", "CWD": str(work), "PARENT": str(tmp_path)}[out]
    before = snapshot(tmp_path)
    result = invoke(*SIMULATE, "--out", path)
    assert_refused(result, path, "working folder")
    assert snapshot(tmp_path) == before
    # the same for an empty working folder, which the emptiness rule alone would let through
    (work / "thesis.tex").unlink()
    assert_refused(invoke(*SIMULATE, "--out", "."), ".", "is the working folder")
    assert list(work.iterdir()) == []


def test_an_existing_file_as_out_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.txt"
    path.write_text("precious\n")
    assert_refused(invoke(*SIMULATE, "--out", str(path)), path, "this is a file")
    assert path.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.txt"]


def test_validate_never_writes_into_or_over_the_measured_run(sim_run: Path) -> None:
    before = snapshot(sim_run)
    for out in (sim_run, sim_run / "predicted"):
        result = invoke("validate", "--measured", str(sim_run), "--out", str(out))
        assert_refused(result, out, f"the input {sim_run}")
    assert snapshot(sim_run) == before


def test_an_output_never_holds_an_input(sim_run: Path) -> None:
    # replaying a run's own requests.jsonl into the same folder would delete the trace being read
    trace = sim_run / "requests.jsonl"
    before = snapshot(sim_run)
    result = invoke("simulate", "--model", MODEL, "--hardware", "h100_sxm", "--trace", str(trace),
                    "--out", str(sim_run))
    assert_refused(result, sim_run, f"holds the input {trace}")
    assert snapshot(sim_run) == before


def test_a_path_under_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "run"
    assert_refused(invoke(*SIMULATE, "--out", str(out)), out, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not Path("/proc/1").is_dir() or os.access("/proc/1", os.W_OK),
                    reason="needs a folder that even root cannot write (Linux /proc/1)")
def test_a_folder_that_cannot_be_written_is_a_one_line_error() -> None:
    # Tests run as root, which chmod does not stop; /proc/1 refuses writes to everyone.
    assert_refused(invoke(*SIMULATE, "--out", "/proc/1/run"), "/proc/1/run", "cannot write in /proc/1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores a read-only mode bit")
def test_a_read_only_parent_is_a_one_line_error(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert_refused(invoke(*SIMULATE, "--out", str(parent / "run")), parent / "run", "cannot write in")
    finally:
        parent.chmod(0o755)


def test_report_out_naming_a_folder_is_a_one_line_error(sim_run: Path, user_folder: Path) -> None:
    before = snapshot(user_folder)
    result = invoke("report", str(sim_run), "--out", str(user_folder))
    assert_refused(result, user_folder, "this is a folder")
    assert snapshot(user_folder) == before


def test_report_never_overwrites_a_user_file_or_a_run_file(sim_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html>my own page</html>")
    assert_refused(invoke("report", str(sim_run), "--out", str(page)), page, "not a paretoserve HTML report")
    assert page.read_text() == "<html>my own page</html>"
    before = snapshot(sim_run)
    requests = sim_run / "requests.jsonl"
    assert_refused(invoke("report", str(sim_run), "--out", str(requests)), requests, "is the input")
    assert snapshot(sim_run) == before


def test_plan_out_naming_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "plan.txt"
    path.write_text("my plan\n")
    assert_refused(invoke(*PLAN, "--out", str(path)), path, "this is a file")
    assert path.read_text() == "my plan\n"


@pytest.mark.parametrize("flags", [
    ["--slo", "ttft=fast"], ["--gpus", "h900"], ["--tp", "3"], ["--budget", "0"], ["--budget-usd", "-1"],
    ["--objective", "speed"], ["--search", "random"], ["--executor", "cloud"], ["--policies", "fifo"],
    ["--weight-dtypes", "fp3"], ["--rate", "0"], ["--profile", "missing.yaml"], ["--trace", "missing.csv"],
    ["--space", "missing.yaml"], ["--model", "no-such-model"],
])
def test_plan_checks_every_flag_before_creating_its_folder(tmp_path: Path, flags: list[str]) -> None:
    out = tmp_path / "out"
    result = invoke(*PLAN, "--out", str(out), *flags)
    assert result.exit_code == 2, (flags, result.output)
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # no out/, no evaluations.jsonl, no temporary folder


# --- replacing one's own output; refusing another command's ------------------------------------

def test_rerunning_simulate_replaces_its_own_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke(*SIMULATE, "--iteration-trace", "--out", str(out)).exit_code == 0
    assert (out / "iterations.csv").is_file()
    assert json.loads((out / MARKER_FILE).read_text())["command"] == "simulate"
    result = invoke(*SIMULATE[:-1], "5", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len((out / "requests.jsonl").read_text().splitlines()) == 5
    assert not (out / "iterations.csv").exists()  # the whole folder was replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_empty_folder_may_receive_a_run(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert invoke(*SIMULATE, "--out", str(out)).exit_code == 0
    assert (out / "requests.jsonl").is_file()


def test_another_commands_output_is_refused(sim_run: Path, tmp_path: Path) -> None:
    before = snapshot(sim_run)
    assert_refused(invoke(*PLAN, "--out", str(sim_run)), sim_run, "output of `paretoserve simulate`")
    measured = tmp_path / "measured"
    assert invoke(*SIMULATE, "--out", str(measured)).exit_code == 0
    result = invoke("validate", "--measured", str(measured), "--out", str(sim_run))
    assert_refused(result, sim_run, "`paretoserve validate` does not replace")
    assert snapshot(sim_run) == before


def test_validate_replaces_its_own_output(sim_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "predicted"
    for _ in range(2):
        result = invoke("validate", "--measured", str(sim_run), "--out", str(out))
        assert result.exit_code == 0, result.output
    assert json.loads((out / MARKER_FILE).read_text())["command"] == "validate"
    assert (out / "report.html").is_file()


def test_report_replaces_its_own_page(sim_run: Path) -> None:
    for _ in range(2):
        result = invoke("report", str(sim_run))
        assert result.exit_code == 0, result.output
    assert (sim_run / "report.html").stat().st_size > 10_000


def test_plan_reuses_its_folder_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "plan"
    assert invoke(*PLAN, "--out", str(out)).exit_code == 0
    evaluations = out / "evaluations.jsonl"
    first, inode = evaluations.read_text(), evaluations.stat().st_ino
    assert first.count("\n") >= 1
    (out / "my-notes.txt").write_text("keep me\n")
    result = invoke(*PLAN, "--out", str(out))
    assert result.exit_code == 0, result.output
    # the same file, nothing appended: every unit came from the resume file; the folder was reused
    assert evaluations.stat().st_ino == inode and evaluations.read_text() == first
    assert (out / "my-notes.txt").read_text() == "keep me\n"
    assert json.loads((out / MARKER_FILE).read_text())["command"] == "plan"


def test_simulate_cannot_replace_a_plan_folder(tmp_path: Path) -> None:
    out = tmp_path / "plan"
    assert invoke(*PLAN, "--no-verify", "--out", str(out)).exit_code == 0
    before = snapshot(out)
    assert_refused(invoke(*SIMULATE, "--out", str(out)), out, "output of `paretoserve plan`")
    assert snapshot(out) == before


# --- other commands ----------------------------------------------------------------------------

def test_calibrate_refuses_a_user_file_and_its_own_input(tmp_path: Path, sim_run: Path) -> None:
    user = tmp_path / "settings.yaml"
    user.write_text("theme: dark\n")
    result = invoke("calibrate", "--from", str(sim_run), "--out", str(user))
    assert_refused(result, user, "not a paretoserve profile")
    assert user.read_text() == "theme: dark\n"
    base = save_profile(Profile(device="h100_sxm", kind="run", source="test"), tmp_path / "base.yaml")
    before = base.read_bytes()
    result = invoke("calibrate", "--from", str(sim_run), "--profile", str(base), "--out", str(base))
    assert_refused(result, base, "is the input")
    assert base.read_bytes() == before


def test_save_profile_replaces_a_profile_only(tmp_path: Path) -> None:
    path = save_profile(Profile(device="h100_sxm", kind="run", source="first"), tmp_path / "p.yaml")
    save_profile(Profile(device="h100_sxm", kind="run", source="second"), path)
    assert load_profile(path).source == "second"
    other = tmp_path / "other.yaml"
    other.write_text("format: something-else\n")
    with pytest.raises(UserError, match="not a paretoserve profile"):
        save_profile(Profile(device="h100_sxm", kind="run"), other)
    assert other.read_text() == "format: something-else\n"


def test_profile_refuses_user_files_before_measuring(tmp_path: Path, user_folder: Path) -> None:
    user = tmp_path / "local.yaml"
    user.write_text("mine: true\n")
    result = invoke("profile", "--model", "Qwen3-0.6B", "--quick", "--out", str(user))
    assert_refused(result, user, "not a paretoserve profile")
    assert user.read_text() == "mine: true\n"
    # the measured tables go to <stem>.kernels/ next to the profile: a user's folder there is refused too
    tables = user_folder.rename(tmp_path / "t.kernels")
    before = snapshot(tables)
    result = invoke("profile", "--model", "Qwen3-0.6B", "--quick", "--out", str(tmp_path / "t.yaml"))
    assert_refused(result, tables, "is not a paretoserve output")
    assert snapshot(tables) == before


def test_building_folder_installs_only_a_complete_folder(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    with building_folder(out, "profile") as tmp:
        (tmp / "a.parquet").write_text("first")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "a.parquet"]
    with pytest.raises(RuntimeError, match="measurement failed"):
        with building_folder(out, "profile") as tmp:
            (tmp / "b.parquet").write_text("second")
            raise RuntimeError("measurement failed")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "a.parquet"]  # the old one, untouched
    with building_folder(out, "profile") as tmp:
        (tmp / "b.parquet").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "b.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]  # no temporary or old folder left


def test_import_vllm_never_writes_into_its_source(tmp_path: Path) -> None:
    source = tmp_path / "vllm-run"
    source.mkdir()
    (source / "requests.jsonl").write_text(json.dumps(
        {"request_id": "a", "input_toks": 10, "output_toks": 2, "arrival_time": 0.0}) + "\n")
    before = snapshot(source)
    for out in (source, source / "imported"):
        assert_refused(invoke("import-vllm", str(source), "--out", str(out)), out, f"the input {source}")
    assert snapshot(source) == before


def test_bench_refuses_a_user_folder_before_sending_anything(user_folder: Path) -> None:
    before = snapshot(user_folder)
    for sweep in ([], ["--sweep"]):
        result = invoke("bench", "--url", "http://127.0.0.1:9/v1", "--prompt", "8", "--output", "2",
                        "--requests", "2", "--no-progress", *sweep, "--out", str(user_folder))
        assert_refused(result, user_folder, "is not a paretoserve output")
    assert snapshot(user_folder) == before


# --- the library API enforces the same rule ----------------------------------------------------

def test_library_calls_refuse_a_user_folder(user_folder: Path, tmp_path: Path) -> None:
    before = snapshot(user_folder)
    config = SimulateConfig(model=MODEL, hardware="h100_sxm", trace="azure-conv", requests=5)
    with pytest.raises(UserError, match="not a paretoserve output"):
        simulate_run(config, user_folder)
    with pytest.raises(UserError, match="not a paretoserve output"):
        plan(MODEL, trace="azure-conv", slo=parse_slo("ttft_p90=2s"), requests=20, out=user_folder,
             space=SearchSpace(devices=["h100_sxm"], tp=[1], disagg=False), executor="serial")
    assert snapshot(user_folder) == before
    with pytest.raises(UserError, match="symbolic link"):
        (tmp_path / "link").symlink_to(user_folder)
        claim_folder(tmp_path / "link", "simulate")
