"""`paretoserve partition`: the run folder (front.csv like plan's), one-line errors with nothing written,
and the report drawn in headless Chromium."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from browser import render_in_chromium
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app

BASE = ["partition", "--model", "mobilenetv2", "--devices", "pi5,pi5,jetson_orin_nx", "--links", "wifi6"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_writes_a_run_folder_with_the_front(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(*BASE, "--batch", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".paretoserve", "candidates.csv", "config.yaml",
                                                     "front.csv", "report.html", "sensitivity.csv"]
    front = list(csv.DictReader((out / "front.csv").open()))
    candidates = list(csv.DictReader((out / "candidates.csv").open()))
    # 21 block boundaries of MobileNetV2, choose 2, times the 3 distinct orders of (pi5, pi5, orin nx).
    assert len(candidates) == 210 * 3
    assert sum(int(c["on_front"]) for c in candidates) == len(front) >= 1
    assert sum(int(r["knee"]) for r in front) == 1 and sum(int(r["best_throughput"]) for r in front) == 1
    best = max(float(c["throughput_per_s"]) for c in candidates)
    assert max(float(r["throughput_per_s"]) for r in front) == best
    # Split points are named by layer: the first block of the next stage and the last layer before it.
    assert all(r["splits"].count(";") == 1 and r["split_after_layers"] for r in front)
    sens = list(csv.DictReader((out / "sensitivity.csv").open()))
    assert [r["link_scenario"] for r in sens] == ["p10", "p50", "p90"]
    rates = [float(r["best_throughput_per_s"]) for r in sens]
    assert rates == sorted(rates)  # more bandwidth never lowers the best throughput
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["command"] == "partition" and config["estimated"] is True
    assert config["macs_per_sample"] == pytest.approx(300e6, rel=0.02)
    # The same command may replace its own earlier output.
    assert invoke(*BASE, "--out", str(out)).exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "mobilenetv9", "--devices", "pi5,pi5"], "unknown model 'mobilenetv9'"),
    (["--model", "resnet18", "--devices", "pi5,pi9"], "unknown hardware 'pi9'"),
    (["--model", "resnet18", "--devices", "pi5,pi5", "--links", "wifi9"], "unknown link 'wifi9'"),
    (["--model", "resnet18", "--devices", "pi5,pi5", "--links", "fast@1ms"], "bandwidth 'fast'"),
    (["--model", "resnet18", "--devices", "pi5,pi5,pi4", "--links", "gbe,gbe,gbe"], "3 devices need 2 link"),
    (["--model", "resnet18", "--devices", "pi5,pi5", "--mode", "eager"], "expected pipelined or sequential"),
    (["--model", "resnet18", "--devices", "pi5,pi5", "--efficiency", "2"], "fraction of peak"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    result = invoke("partition", *args, "--out", str(out))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_never_writes_over_a_user_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    result = invoke(*BASE, "--out", str(out))
    assert result.exit_code == 2 and "not a paretoserve output" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke("partition", "--model", "resnet18", "--devices", "pi5,jetson_orin_nano", "--links", "5g",
                  "--out", str(out)).exit_code == 0
    dom, errors = render_in_chromium(out / "report.html", tmp_path / "profile")
    assert errors == []
    start = dom.index('id="partition"')
    assert 'class="main-svg"' in dom[start:]
    assert "Pareto front at the median link" in dom and "Sensitivity to the link" in dom


def test_an_llm_partition_and_an_unknown_model(tmp_path: Path) -> None:
    out = tmp_path / "llm"
    result = invoke("partition", "--model", "Qwen3-0.6B", "--devices", "l4,a10g", "--links", "gbe",
                    "--phase", "decode", "--batch", "16", "--out", str(out))
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    # 29 cuts (after the embedding and each of 28 layers) × 2 orders, plus attention offload both ways.
    assert config["kind"] == "llm" and config["sample"] == "token" and config["candidates"] == 29 * 2 + 2
    kinds = {row["kind"] for row in csv.DictReader((out / "candidates.csv").open())}
    assert kinds == {"pipeline", "attention offload"}
    bad = invoke("partition", "--model", "no-such-model", "--devices", "l4", "--out", str(tmp_path / "x"))
    assert bad.exit_code == 2 and "unknown model" in bad.output and "mobilenetv2" in bad.output
