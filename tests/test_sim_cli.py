"""`paretoserve simulate`: run folder, determinism, and one-line errors with nothing half-written."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.sim import engine

BASE = ["simulate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm"]


def invoke(*args):
    return CliRunner().invoke(app, [*BASE, *args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    result = invoke("--trace", "azure-conv", "--requests", "200", "--slo", "ttft_p90=2s,tpot_p90=80ms",
                    "--iteration-trace", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert leftovers(out) == [".paretoserve", "config.yaml", "iterations.csv", "requests.jsonl", "summary.json"]
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["output_tokens"] > 0 for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 200 and summary["estimated"] is True
    assert summary["energy_j"] > 0 and summary["usd_per_million_output_tokens"] > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["simulate"]["trace"] == "azure-conv" and config["simulate"]["requests"] == 200
    assert config["derived"]["replica"]["kv_tokens"] > 0 and "estimate" in config["derived"]["energy_model"]
    header, *rows = (out / "iterations.csv").read_text().splitlines()
    assert header.startswith("replica,start_s,duration_s,iterations") and rows
    assert "TTFT" in result.output and "goodput" in result.output


def test_same_seed_and_inputs_give_byte_identical_records(tmp_path):
    def run(name, seed):
        result = invoke("--trace", "azure-code", "--arrival", "gamma:2", "--rate", "4", "--requests", "300",
                        "--seed", seed, "--disagg", "1P1D", "--out", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        return (tmp_path / name / "requests.jsonl").read_bytes()

    first = run("a", "3")
    assert first == run("b", "3")
    assert first != run("c", "4")


def test_unknown_policy_lists_the_known_ones_and_writes_nothing(tmp_path):
    result = invoke("--trace", "azure-conv", "--policy", "fifo", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    known = "vllm, orca, sarathi, priority, slo, lengthaware, sglang, trtllm"
    assert f"unknown policy 'fifo'; known policies: {known}" in result.output
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("policy,block_size", [("sglang", 1), ("trtllm", 32), ("vllm", 16)])
def test_engine_policy_choice_sets_its_block_size(tmp_path, policy, block_size):
    """--policy picks the engine's scheduler; without --block-size the KV block is the engine's page
    (SGLang 1 token, TensorRT-LLM 32, vLLM 16), recorded in config.yaml."""
    out = tmp_path / "run"
    result = invoke("--trace", "azure-conv", "--requests", "100", "--policy", policy, "--out", str(out))
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["simulate"]["policy"] == policy
    assert config["derived"]["replica"]["block_size"] == block_size
    assert json.loads((out / "summary.json").read_text())["completed"] == 100


@pytest.mark.parametrize("body,expected", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
     "2023-11-16 18:15:50.99,abc,109\n", ":3 field 'ContextTokens'"),
    ("TIMESTAMP,GeneratedTokens\n2023-11-16 18:15:46.68,44\n", "ContextTokens"),
])
def test_bad_trace_is_one_line_naming_file_line_and_field(tmp_path, body, expected):
    trace = tmp_path / "bad.csv"
    trace.write_text(body)
    out = tmp_path / "run"
    result = invoke("--trace", str(trace), "--out", str(out))
    assert result.exit_code == 2
    assert "bad.csv" in result.output and expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert leftovers(tmp_path) == ["bad.csv"]


def test_lengths_over_the_model_context_are_refused(tmp_path):
    trace = tmp_path / "long.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,200000,10\n")
    result = invoke("--trace", str(trace), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "131072" in result.output and "exceed" in result.output
    assert leftovers(tmp_path) == ["long.csv"]


def test_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(self, record):
        if self.arrived > 50:
            raise KeyboardInterrupt
        original(self, record)

    original = engine.Simulation._done
    monkeypatch.setattr(engine.Simulation, "_done", interrupted)
    result = invoke("--trace", "azure-conv", "--requests", "500", "--out", str(tmp_path / "run"))
    assert result.exit_code != 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("trace", ["azure-conv", "azure-code"])
def test_rate_is_delivered_on_the_requests_simulated(tmp_path, trace):
    """--rate R --requests N: the N requests simulated arrive at R req/s, (N − 1) / (last − first)."""
    out = tmp_path / "run"
    result = invoke("--trace", trace, "--rate", "10", "--requests", "200", "--out", str(out))
    assert result.exit_code == 0, result.output
    arrivals = sorted(json.loads(line)["arrival_s"] for line in (out / "requests.jsonl").read_text().splitlines())
    assert len(arrivals) == 200
    delivered = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert delivered == pytest.approx(10.0, rel=0.01)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["delivered_rate_rps"] == pytest.approx(delivered, rel=1e-9)
    assert "delivered 10 req/s over 200 requests" in result.output
