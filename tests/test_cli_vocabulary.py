"""One vocabulary across commands (issue 9 §5): the same flag for the same concept, JSON from the
catalog, raw vLLM folders accepted where a measured run is, help and tables that survive an
80-column terminal, cost per million total tokens, and a start-up that loads no heavy module."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from paretoserve.catalog.device import NUMERIC_FIELDS, list_devices, load_device
from paretoserve.catalog.model import bundled_model_names
from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app, console
from paretoserve.cli.measured import is_raw_vllm, read_measured
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.summary import summarize
from prereq import IN_CI

runner = CliRunner()
SERVING_RUN = Path(__file__).resolve().parents[2] / "shared" / "data" / "serving_runs" / \
    "rtx4090_llama3.1-8b_vllm0.19"
needs_serving_run = pytest.mark.skipif(not SERVING_RUN.is_dir() and not IN_CI,
                                       reason=f"{SERVING_RUN} is not present")
HEAVY = ("optuna", "plotly", "pyarrow", "ray", "scipy", "pandas", "aiohttp", "torch")
#: The one long flag each short flag stands for, in every command that has it.
SHORT_FLAGS = {"-H": "--hardware", "-m": "--model", "-o": "--out", "-t": "--trace", "-n": "--requests",
               "-r": "--rate"}


def _commands() -> dict[str, object]:
    """Every leaf command of the CLI by its path, e.g. "catalog show"."""
    found: dict[str, object] = {}

    def walk(command: object, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = command

    walk(typer.main.get_command(app), "")
    return found


@pytest.fixture
def narrow(monkeypatch):
    """An 80-column terminal: Rich tables (console width) and Click help (COLUMNS)."""
    monkeypatch.setattr(console, "width", 80)
    monkeypatch.setenv("COLUMNS", "80")


def _whole_on_a_line(output: str, tokens: list[str]) -> list[str]:
    """The tokens that no single output line holds intact (split across lines or truncated)."""
    lines = output.splitlines()
    return [t for t in tokens if not any(t in line for line in lines)]


# ----------------------------------------------------------------------------- 1. same flags


def test_a_short_flag_means_one_thing_in_every_command():
    meaning: dict[str, set[str]] = {}
    for path, command in _commands().items():
        for param in command.params:
            opts = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("-")]
            if not opts:  # an argument
                continue
            longs = [o for o in opts if o.startswith("--")]
            for short in (o for o in opts if not o.startswith("--")):
                meaning.setdefault(short, set()).add(longs[0])
            for short, long in SHORT_FLAGS.items():
                if long in opts:
                    assert short in opts, f"{path}: {long} lacks its short form {short}"
    ambiguous = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not ambiguous, ambiguous
    for short, long in SHORT_FLAGS.items():
        assert meaning[short] == {long}


def test_plan_takes_hardware_like_estimate_and_simulate_with_gpus_as_alias(tmp_path):
    for flag in ("--hardware", "-H", "--gpus"):
        result = runner.invoke(app, ["plan", "-m", "Qwen3-0.6B", flag, "no_such_gpu", "--requests", "40",
                                     "--out", str(tmp_path / flag.strip("-"))])
        assert result.exit_code == 2, (flag, result.output)
        assert "unknown hardware 'no_such_gpu'" in result.output, (flag, result.output)


def test_the_device_budget_has_one_name_in_help_and_errors(tmp_path):
    help_text = " ".join(runner.invoke(app, ["plan", "--help"]).output.split())
    assert "--budget <int> Device budget:" in help_text
    assert "--budget-usd <float> Dollar budget:" in help_text
    # Llama-3.1-70B needs more than one L4 for its weights: nothing fits a one-device budget.
    result = runner.invoke(app, ["plan", "-m", "Meta-Llama-3.1-70B", "-H", "l4", "--budget", "1",
                                 "--requests", "40", "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    assert "over the device budget" in result.output


# ----------------------------------------------------------------------------- 2. catalog JSON


def test_catalog_models_json_parses_and_matches_hand_counts():
    result = runner.invoke(app, ["catalog", "models", "--json"])
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in json.loads(result.output)["models"]}
    assert sorted(models) == sorted(bundled_model_names())
    llama = models["Meta-Llama-3.1-8B"]
    # Llama 3.1 8B: 32 layers, 8 KV heads of 128 dims, K and V in bf16 (2 bytes) per token.
    assert llama["layers"] == 32
    assert llama["kv_bytes_per_token"] == 32 * 8 * 128 * 2 * 2
    assert llama["max_context_tokens"] == 131_072
    assert 8.0e9 < llama["params_total"] < 8.1e9  # the model card's 8.03 B
    assert llama["weight_dtype"] == "bf16"


def test_catalog_hardware_json_matches_the_table_and_names_its_units():
    parsed = json.loads(runner.invoke(app, ["catalog", "hardware", "--json"]).output)
    assert set(parsed["units"]) == set(NUMERIC_FIELDS)
    assert parsed["units"]["mem_bandwidth"] == "B/s" and parsed["units"]["price_per_hour"] == "USD/h"
    devices = {d["name"]: d for d in parsed["devices"]}
    assert sorted(devices) == sorted(d.name for d in list_devices())
    h100 = devices["h100_sxm"]
    assert h100["mem_bandwidth"] == 3.35e12  # H100 SXM datasheet: 3.35 TB/s
    assert h100["flops"]["bf16"] == pytest.approx(989.4e12)  # dense BF16, whitepaper
    table = runner.invoke(app, ["catalog", "hardware"]).output
    row = next(line for line in table.splitlines() if line.startswith("h100_sxm "))
    for text in (f"{h100['flops']['bf16'] / 1e12:,.0f}", f"{h100['mem_capacity'] / 2**30:,.1f}",
                 f"{h100['mem_bandwidth'] / 1e9:,.0f}", f"{h100['power_max']:,.0f}",
                 f"{h100['price_per_hour']:.2f}"):
        assert text in row.split(), (text, row)


def test_catalog_show_json_for_a_device_and_a_model():
    device = json.loads(runner.invoke(app, ["catalog", "show", "h100", "--json"]).output)
    assert device["device"] == load_device("h100_sxm").model_dump()
    assert device["units"]["mem_capacity"] == "B"
    model = json.loads(runner.invoke(app, ["catalog", "show", "gpt-oss-120b", "--json"]).output)["model"]
    # gpt-oss-120b: 36 layers, every one with 128 experts of which 4 per token (model card).
    assert sum(g["count"] for g in model["layer_groups"]) == model["layers"] == 36
    assert {(g["mlp"]["num_experts"], g["mlp"]["top_k"]) for g in model["layer_groups"]} == {(128, 4)}
    assert model["params"]["total"] == model["params_total"]


# ----------------------------------------------------------------------------- 3. raw vLLM runs


@needs_serving_run
def test_validate_accepts_a_raw_vllm_run_folder_and_leaves_it_alone():
    before = {p.name: p.stat().st_mtime_ns for p in SERVING_RUN.iterdir()}
    result = runner.invoke(app, ["validate", "--measured", str(SERVING_RUN)])
    assert result.exit_code == 0, result.output
    assert "arrival_s" not in result.output
    assert "replayed 300 measured requests" in " ".join(result.output.split())
    assert "imported on the fly" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in SERVING_RUN.iterdir()} == before


@needs_serving_run
def test_calibrate_from_a_raw_vllm_run_folder(tmp_path, monkeypatch):
    from paretoserve.calibrate import run_fit

    fit_run = run_fit.fit_run
    monkeypatch.setattr(run_fit, "fit_run", lambda *a, **k: fit_run(*a, **{**k, "max_evaluations": 12}))
    before = {p.name: p.stat().st_mtime_ns for p in SERVING_RUN.iterdir()}
    out = tmp_path / "rtx4090.yaml"
    result = runner.invoke(app, ["calibrate", "--from", str(SERVING_RUN), "--out", str(out),
                                 "--fit-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    profile = out.read_text()
    assert "device: rtx_4090" in profile  # from meta.json, as import-vllm reads it
    assert str(SERVING_RUN) in profile
    assert {p.name: p.stat().st_mtime_ns for p in SERVING_RUN.iterdir()} == before


@needs_serving_run
def test_imported_and_raw_folders_are_told_apart(tmp_path):
    assert is_raw_vllm(SERVING_RUN)
    raw, imported = read_measured(SERVING_RUN)
    assert imported and raw.path == SERVING_RUN and len(raw.records) == 300
    assert runner.invoke(app, ["import-vllm", str(SERVING_RUN), "--out", str(tmp_path / "run")]).exit_code == 0
    assert not is_raw_vllm(tmp_path / "run")
    run, imported = read_measured(tmp_path / "run")
    assert not imported
    assert [r.to_json() for r in run.records] == [r.to_json() for r in raw.records]


# ----------------------------------------------------------------------------- 4. help and tables


@pytest.mark.parametrize("path", sorted(_commands()))
def test_every_help_text_prints_as_written(path, narrow):
    """Nothing in a flag's help is eaten as markup ("[default: 8]") or turned into an emoji (":A:")."""
    result = runner.invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output

    def flat(text: str) -> str:  # whitespace as one space; Click may wrap after a hyphen
        return re.sub(r"-\s+", "-", " ".join(text.split()))

    shown = flat(result.output)
    for param in _commands()[path].params:
        if getattr(param, "help", None) and not getattr(param, "hidden", False):
            assert flat(param.help) in shown, (path, param.help)
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_simulate_help_lists_every_policy():
    from paretoserve.cli.simulate_cmd import POLICY_NAMES
    from paretoserve.sim.schedulers import POLICIES

    assert POLICY_NAMES == tuple(POLICIES)


def test_defaults_and_length_specs_survive_help_and_errors(narrow, tmp_path):
    plan_help = " ".join(runner.invoke(app, ["plan", "--help"]).output.split())
    assert "[default: 8]" in plan_help and "[default: 1,2,4,8]" in plan_help
    simulate_help = runner.invoke(app, ["simulate", "--help"]).output
    assert "uniform:A:B" in simulate_help and "🅰" not in simulate_help
    result = runner.invoke(app, ["simulate", "-m", "Qwen3-0.6B", "-H", "l4", "--prompt", "uniform:A:B",
                                 "--output", "8", "-n", "5", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "uniform:A:B" in result.output and "🅰" not in result.output


def test_catalog_show_prints_units():
    shown = runner.invoke(app, ["catalog", "show", "h100_sxm"]).output
    for text in ("989.4 TFLOP/s", "3,350 GB/s", "79.2 GiB", "700 W", "$2.99/h", "10 µs"):
        assert text in shown, text


def test_catalog_tables_keep_identifiers_whole_at_80_columns(narrow):
    models = runner.invoke(app, ["catalog", "models"]).output
    assert not _whole_on_a_line(models, bundled_model_names())
    hardware = runner.invoke(app, ["catalog", "hardware"]).output
    words = [w for d in list_devices() for w in (d.name, *d.display_name.split())]
    assert not _whole_on_a_line(hardware, words)
    assert max(len(line) for line in models.splitlines() + hardware.splitlines()) <= 80


def test_estimate_and_simulate_tables_keep_identifiers_whole_at_80_columns(narrow, tmp_path):
    estimate = runner.invoke(app, ["estimate", "-m", "DeepSeek-V3", "-H", "h200_sxm", "--tp", "8",
                                   "--batch", "64", "--prompt", "8192"])
    assert estimate.exit_code == 0, estimate.output
    assert not _whole_on_a_line(estimate.output, ["attn.mla_qkv_a", "attn.mla_kv_up", "tp.allreduce",
                                                  "norm+residual", "moe.experts", "compute", "memory"])
    simulate = runner.invoke(app, ["simulate", "-m", "Qwen3-0.6B", "-H", "l4", "--arrival", "poisson",
                                   "--rate", "2", "-n", "30", "--prompt", "200", "--output", "20",
                                   "--out", str(tmp_path / "s")])
    assert simulate.exit_code == 0, simulate.output
    assert not _whole_on_a_line(simulate.output, ["latency in ms", "$ / M output tok", "$ / M total tok",
                                                  "J / output tok", "estimated by simulation"])


# ----------------------------------------------------------------------------- 5. total tokens


def test_summary_costs_per_million_output_and_total_tokens():
    records = [RequestRecord("a", 0.0, 300, 100, first_token_s=0.5, last_token_s=2.0),
               RequestRecord("b", 1.0, 500, 100, first_token_s=1.5, last_token_s=4.0)]
    summary = summarize(records, cost_usd=0.01)
    assert summary.usd_per_million_output_tokens == pytest.approx(0.01 / 200 * 1e6)  # $50
    assert summary.usd_per_million_total_tokens == pytest.approx(0.01 / 1000 * 1e6)  # $10


def test_simulated_run_costs_price_times_duration_per_total_token(tmp_path):
    out = tmp_path / "s"
    result = runner.invoke(app, ["simulate", "-m", "Qwen3-0.6B", "-H", "l4", "--arrival", "poisson",
                                 "--rate", "2", "-n", "40", "--prompt", "uniform:100:900", "--output", "20",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    price_per_hour = load_device("l4").price_per_hour  # one device
    hand = price_per_hour * s["duration_s"] / 3600 / (s["input_tokens"] + s["output_tokens"]) * 1e6
    assert s["usd_per_million_total_tokens"] == pytest.approx(hand, rel=1e-9)
    assert "$ / M total tok" in result.output


def test_plan_front_gives_cost_per_total_token_and_fits_80_columns(tmp_path, narrow):
    out = tmp_path / "plan"
    result = runner.invoke(app, ["plan", "-m", "Qwen3-0.6B", "-H", "l4", "--tp", "1,2", "-n", "60",
                                 "--no-verify", "--executor", "serial", "--out", str(out)])
    assert result.exit_code == 0, result.output
    units = {}
    for line in (out / "evaluations.jsonl").read_text().splitlines():
        unit = json.loads(line)
        units[unit["key"]] = unit
    with open(out / "front.csv", newline="") as handle:
        front = list(csv.DictReader(handle))
    checked = 0
    for row in front:
        plan = json.loads(next(line for line in (out / "plans.jsonl").read_text().splitlines()
                               if json.loads(line)["label"] == row["label"]))["plan"]
        if plan["disagg"] is None:  # one serve unit: hand formula from its tokens per request
            unit = next(u for k, u in units.items() if k.startswith(f"serve|l4|tp{plan['tp']}|"))
            tokens_per_s = float(row["max_rate_rps"]) * (unit["input_tokens_per_request"]
                                                          + unit["output_tokens_per_request"])
            hand = float(row["usd_per_hour"]) / (tokens_per_s * 3600) * 1e6
            assert float(row["usd_per_million_total_tokens"]) == pytest.approx(hand, rel=1e-5)
            checked += 1
        assert float(row["usd_per_million_total_tokens"]) < float(row["usd_per_million_tokens"])
    assert checked
    table = result.output.split("Pareto front")[1].split("Recommended:")[0]
    assert "$/M" in table and "all" in table
    words = {w for row in front for w in re.sub(r" seqs\d+ mbt\d+", "", row["label"]).split()}
    assert not _whole_on_a_line(table, sorted(words))
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 80


# ----------------------------------------------------------------------------- 6. start-up


def _modules_after(argv: list[str]) -> set[str]:
    """Top-level modules loaded after running `paretoserve ARGV` in a fresh interpreter."""
    code = (f"import sys\nsys.argv = ['paretoserve', *{argv!r}]\nfrom paretoserve.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "COLUMNS": "80"})
    return set(result.stdout.strip().splitlines()[-1].split())


@pytest.mark.parametrize("argv", [["--help"], ["catalog", "models"], ["plan", "--help"]])
def test_cheap_commands_import_no_heavy_module(argv):
    loaded = _modules_after(argv)
    assert "paretoserve" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_library_api_is_still_one_import_away():
    code = ("import paretoserve.plan.search, paretoserve\n"
            "from paretoserve import estimate, plan, simulate, simulate_run\n"
            "print(all(callable(f) for f in (estimate, plan, simulate, simulate_run)),"
            " paretoserve.plan is plan, plan.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "paretoserve.plan.api"]
