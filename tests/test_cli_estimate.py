"""`paretoserve estimate` and `catalog` end to end through the CLI: output and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app, console

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables wider than the test terminal would wrap names; print them on one line."""
    monkeypatch.setattr(console, "width", 250)


def test_estimate_json_reports_consistent_figures():
    result = runner.invoke(app, ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm",
                                 "--batch", "64", "--prompt", "512", "--context", "2048", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["estimated"] is True
    assert data["decode_tokens_per_s"] == 64 / data["decode"]["seconds"]
    assert abs(sum(op["seconds"] for op in data["decode"]["ops"]) - data["decode"]["seconds"]) < 1e-12
    # Decode at batch 64 on H100 is memory-bound: at least the bf16 weights (2 B/param) must be read.
    assert data["decode"]["seconds"] > 2 * 8.03e9 / 3.35e12
    assert data["max_sequences_at_context"] == data["kv_capacity_tokens"] // 2048


def test_estimate_table_names_operators():
    result = runner.invoke(app, ["estimate", "-m", "Qwen3-30B-A3B", "-H", "h100", "--batch", "8"])
    assert result.exit_code == 0, result.output
    for word in ("moe.experts", "attn.decode", "KV cache", "Estimated"):
        assert word in result.output


def test_bad_inputs_give_one_line_and_exit_2():
    cases = [
        (["estimate", "-m", "Llama-9", "-H", "h100_sxm"], "unknown model"),
        (["estimate", "-m", "Meta-Llama-3.1-8B", "-H", "h900"], "unknown hardware"),
        (["estimate", "-m", "Meta-Llama-3.1-8B", "-H", "h100_sxm", "--tp", "3"], "valid TP sizes"),
        (["estimate", "-m", "Meta-Llama-3.1-70B", "-H", "l4"], "does not fit"),
        (["estimate", "-m", "Meta-Llama-3.1-8B", "-H", "h100_sxm", "--kv-dtype", "fp7"], "unknown dtype"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.strip()]) <= 3


def test_catalog_lists_and_shows():
    models = runner.invoke(app, ["catalog", "models"])
    assert models.exit_code == 0 and "DeepSeek-V3" in models.output
    hardware = runner.invoke(app, ["catalog", "hardware"])
    assert hardware.exit_code == 0 and "h100_sxm" in hardware.output
    shown = runner.invoke(app, ["catalog", "show", "h100_sxm"])
    assert shown.exit_code == 0 and "mem_bandwidth" in shown.output
    shown = runner.invoke(app, ["catalog", "show", "gpt-oss-120b"])
    assert shown.exit_code == 0
    assert "128 (4 × 2880)" in shown.output  # 128 experts, top-4, width 2880
