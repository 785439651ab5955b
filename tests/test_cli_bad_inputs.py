"""Bad input through the CLI: exit code 2, one line on stderr starting with "error:", no traceback.

One case per kind of bad file or string each command reads (traces, model configs, hardware and
profile files, search spaces, run folders, SLO / length / arrival specs). Every case also checks
that nothing was written to its output folder.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import paretoserve
import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.metrics import RequestRecord

CATALOG = Path(paretoserve.__file__).parent / "catalog"
LLAMA = json.loads((CATALOG / "models" / "Meta-Llama-3.1-8B.json").read_text())
SIM = ["simulate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm"]
SYNTHETIC = ["--arrival", "poisson", "--rate", "2", "--requests", "5"]
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def _folder(tmp: Path, name: str) -> str:
    path = tmp / name
    path.mkdir()
    return str(path)


def _config(tmp: Path, **changes: object) -> str:
    return _file(tmp, "config.json", json.dumps({**LLAMA, **changes}))


def _run(tmp: Path, requests: str | bytes | None = None, config: str | None = None,
         summary: str | None = None) -> str:
    """A run folder: good records unless `requests` is given, plus the given config / summary."""
    folder = tmp / "run"
    folder.mkdir()
    good = "\n".join(RequestRecord(str(i), i * 0.5, 100, 10, first_token_s=i * 0.5 + 0.1,
                                   last_token_s=i * 0.5 + 0.5).to_json() for i in range(4)) + "\n"
    _file(folder, "requests.jsonl", good if requests is None else requests)
    if config is not None:
        _file(folder, "config.yaml", config)
    if summary is not None:
        _file(folder, "summary.json", summary)
    return str(folder)


def _profile(tmp: Path, **changes: object) -> str:
    doc = {"format": "paretoserve-profile/1", "kind": "run", "device": "h100_sxm",
           "coefficients": {"compute_scale": 1.0}, **changes}
    return _file(tmp, "profile.yaml", yaml.safe_dump(doc))


def _space(tmp: Path, text: str) -> str:
    return _file(tmp, "space.yaml", text)


def _device(tmp: Path, text: str | bytes) -> str:
    return _file(tmp, "device.yaml", text)


#: id -> (arguments given a scratch folder, text the error line must contain).
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    # simulate --trace: files
    "trace-empty": (lambda t: [*SIM, "--trace", _file(t, "e.csv", "")], "empty trace"),
    "trace-folder": (lambda t: [*SIM, "--trace", str(t)], "is a folder"),
    "trace-binary": (lambda t: [*SIM, "--trace", _file(t, "b.csv", bytes(range(256)) * 4)], "binary data"),
    "trace-not-utf8": (lambda t: [*SIM, "--trace", _file(t, "l.csv", AZURE_HEADER.encode() + b"1,2,\xe9\n")],
                       "not UTF-8"),
    "trace-huge-line": (lambda t: [*SIM, "--trace", _file(t, "h.jsonl", b"{" + b" " * (2 << 20) + b"}\n")],
                        "line longer than 1,048,576 bytes"),
    "trace-wrong-columns": (lambda t: [*SIM, "--trace", _file(t, "w.csv", "time,ContextTokens,x\n1,2,3\n")],
                            "unknown CSV trace header"),
    "trace-negative-tokens": (lambda t: [*SIM, "--trace", _file(t, "n.csv", AZURE_HEADER + "1,-5,3\n")],
                              ":2 field 'ContextTokens'"),
    "trace-nan-time": (lambda t: [*SIM, "--trace", _file(t, "t.csv", AZURE_HEADER + "nan,5,3\n")],
                       "field 'TIMESTAMP'"),
    "trace-huge-count": (lambda t: [*SIM, "--trace", _file(
        t, "c.jsonl", '{"arrival_s": 0, "prompt_tokens": 1000000000000, "output_tokens": 5}\n')],
        "field 'prompt_tokens': expected an integer from 0 to 100,000,000"),
    "trace-bad-json": (lambda t: [*SIM, "--trace", _file(t, "j.jsonl", '{"arrival_s": 0,\n')], "not valid JSON"),
    "trace-missing": (lambda t: [*SIM, "--trace", str(t / "nowhere.csv")], "no such file"),
    "trace-corrupt-gzip": (lambda t: [*SIM, "--trace", _file(t, "z.csv.gz", gzip.compress(b"a" * 100)[:20])],
                           "corrupt or truncated gzip"),
    # --model, --hardware
    "model-unknown": (lambda t: ["simulate", "--model", "llama-9", "--hardware", "h100_sxm", "--trace",
                                 "azure-conv"], "unknown model 'llama-9'"),
    "model-hidden-0": (lambda t: ["estimate", "--model", _config(t, hidden_size=0), "--hardware", "h100_sxm"],
                       "field 'hidden_size': expected an integer from 1 to 1,000,000, got 0"),
    "model-1e9-layers": (lambda t: ["estimate", "--model", _config(t, num_hidden_layers=10**9),
                                    "--hardware", "h100_sxm"], "field 'num_hidden_layers'"),
    "model-heads": (lambda t: ["estimate", "--model", _config(t, num_key_value_heads=5), "--hardware", "h100_sxm"],
                    "not a multiple of num_key_value_heads=5"),
    "model-not-json": (lambda t: ["estimate", "--model", _file(t, "m.json", "{hidden_size: 1}"),
                                  "--hardware", "h100_sxm"], "not valid JSON"),
    "model-array": (lambda t: ["estimate", "--model", _file(t, "a.json", "[1, 2]"), "--hardware", "h100_sxm"],
                    "expected a JSON object"),
    "model-folder-without-config": (lambda t: ["estimate", "--model", str(t), "--hardware", "h100_sxm"],
                                    "holds no config.json"),
    "hardware-unknown": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h900"],
                         "unknown hardware 'h900'"),
    "hardware-negative": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware",
                                     _device(t, "base: h100_sxm\nmem_bandwidth: -1\n")], "mem_bandwidth"),
    "hardware-binary": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware",
                                   _device(t, b"\x00\xff" * 50)], "binary data"),
    # --slo, --prompt / --output, --arrival, --policy-option
    "slo-itl": (lambda t: [*SIM, "--trace", "azure-conv", "--slo", "itl_p99=50ms"], "ITL is not an objective"),
    "slo-percentile": (lambda t: [*SIM, "--trace", "azure-conv", "--slo", "ttft_p80=1s"], "unknown objective"),
    "slo-garbage": (lambda t: [*SIM, "--trace", "azure-conv", "--slo", "fast"], "has no '='"),
    "slo-negative": (lambda t: [*SIM, "--trace", "azure-conv", "--slo", "ttft_p90=-2s"], "positive duration"),
    "prompt-reversed": (lambda t: [*SIM, *SYNTHETIC, "--prompt", "uniform:10:5", "--output", "8"],
                        "B must be >= A"),
    "prompt-sigma": (lambda t: [*SIM, *SYNTHETIC, "--prompt", "lognormal:100:50", "--output", "8"],
                     "SIGMA from 0 to 10"),
    "output-huge": (lambda t: [*SIM, *SYNTHETIC, "--prompt", "10", "--output", "1e12"],
                    "not a whole number from 1 to 100,000,000"),
    "arrival-gamma-0": (lambda t: [*SIM, "--arrival", "gamma:0", "--rate", "2", "--requests", "5",
                                   "--prompt", "10", "--output", "8"], "burstiness (CV)"),
    "arrival-ramp-nan": (lambda t: [*SIM, "--arrival", "ramp:nan:1", "--requests", "5", "--prompt", "10",
                                    "--output", "8"], "ramp rates"),
    "arrival-unknown": (lambda t: [*SIM, "--arrival", "burst", "--requests", "5", "--prompt", "10",
                                   "--output", "8"], "arrival 'burst'"),
    "policy-option": (lambda t: [*SIM, "--trace", "azure-conv", "--policy-option", "chunk_size"], "KEY=NUMBER"),
    # --profile
    "profile-missing": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm",
                                   "--profile", str(t / "no.yaml")], "profile not found"),
    "profile-bad-yaml": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm",
                                    "--profile", _file(t, "p.yaml", "format: [")], "not valid YAML"),
    "profile-coefficient": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm",
                                       "--profile", _profile(t, coefficients={"compute_scale": "fast"})],
                            "coefficients.compute_scale"),
    "profile-binary": (lambda t: ["estimate", "--model", "Meta-Llama-3.1-8B", "--hardware", "h100_sxm",
                                  "--profile", _file(t, "b.yaml", b"\x89PNG\r\n\x1a\n\x00")], "binary data"),
    # plan
    "plan-space-list": (lambda t: ["plan", "--model", "Meta-Llama-3.1-8B", "--space", _space(t, "- 1\n- 2\n"),
                                   "--out", str(t / "out")], "expected a mapping"),
    "plan-space-field": (lambda t: ["plan", "--model", "Meta-Llama-3.1-8B", "--space",
                                    _space(t, "devices: [h100_sxm]\ntp: [0]\n"), "--out", str(t / "out")],
                         "field 'tp"),
    "plan-space-binary": (lambda t: ["plan", "--model", "Meta-Llama-3.1-8B", "--space",
                                     _space(t, b"\xff\xfe\x00t"), "--out", str(t / "out")], "binary data"),
    "plan-slo-itl": (lambda t: ["plan", "--model", "Meta-Llama-3.1-8B", "--slo", "itl_p99=1ms",
                                "--out", str(t / "out")], "ITL is not an objective"),
    # report, validate, calibrate --from: run folders
    "report-not-a-run": (lambda t: ["report", str(t)], "requests.jsonl is missing"),
    "report-binary-records": (lambda t: ["report", _run(t, requests=b"\x00\x01\x02"), "--out",
                                         str(t / "r.html")], "binary data"),
    "report-bad-config": (lambda t: ["report", _run(t, config="a: [1,"), "--out", str(t / "r.html")],
                          "not valid YAML"),
    "report-summary-list": (lambda t: ["report", _run(t, summary="[1, 2]"), "--out", str(t / "r.html")],
                            "expected a JSON mapping"),
    "report-record-type": (lambda t: ["report", _run(t, requests='{"request_id": "a", "arrival_s": 0, '
                                                     '"prompt_tokens": 5, "output_tokens": 2, "itl_s": "x"}\n'),
                                      "--out", str(t / "r.html")], "field 'itl_s'"),
    "validate-missing-field": (lambda t: ["validate", "--measured", _run(t, requests='{"request_id": "a"}\n')],
                               "field 'arrival_s': missing"),
    "validate-config-tp": (lambda t: ["validate", "--measured", _run(
        t, config="engine_settings: {model: Meta-Llama-3.1-8B, hardware: h100_sxm, tp: abc}\n")], "'tp'"),
    "calibrate-from-missing": (lambda t: ["calibrate", "--from", str(t / "none"), "--out", str(t / "p.yaml")],
                               "does not exist"),
    "calibrate-transfer-bad": (lambda t: ["calibrate", "--kernels", _folder(t, "kernels"), "--transfer-from",
                                          _file(t, "r.yaml", "format: other\n"), "--out", str(t / "p.yaml")],
                               "not a paretoserve profile"),
    # import-vllm, catalog show
    "import-bench-json": (lambda t: ["import-vllm", _file(t, "b.json", json.dumps(
        {"ttfts": ["a"], "itls": [[]], "input_lens": [1], "output_lens": [1]})), "--out", str(t / "out")],
        "not a number"),
    "import-jsonl-type": (lambda t: ["import-vllm", _file(t, "r.jsonl", json.dumps(
        {"request_id": 1, "input_toks": "abc", "output_toks": 1, "arrival_time": 0, "queued_ts": 0})),
        "--out", str(t / "out")], "field 'input_toks'"),
    "catalog-show-unknown": (lambda t: ["catalog", "show", "nothing-like-this"], "neither a bundled model"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line(tmp_path: Path, case: str) -> None:
    build, expected = CASES[case]
    args = build(tmp_path)
    if args[0] == "simulate":
        args += ["--out", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    created = sorted(p.name for p in tmp_path.iterdir())
    assert created == before, f"{case} wrote {set(created) - set(before)}"
