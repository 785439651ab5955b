"""Importing vLLM measurements: bench serve result JSON and per-request JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paretoserve.bench.importers import (
    import_vllm,
    import_vllm_bench,
    import_vllm_requests,
    vllm_run_settings,
)
from paretoserve.cli import commands  # noqa: F401  (registers the commands on `app`)
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.runs import read_run
from prereq import IN_CI

SERVING_RUN = Path(__file__).resolve().parents[2] / "shared" / "data" / "serving_runs" / \
    "rtx4090_llama3.1-8b_vllm0.19"
needs_serving_run = pytest.mark.skipif(not SERVING_RUN.is_dir() and not IN_CI, reason=f"{SERVING_RUN} is not present")


def _rows(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_serving_run
def test_per_request_jsonl_is_put_on_one_clock() -> None:
    rows = {str(r["request_id"]): r for r in _rows(SERVING_RUN / "requests.jsonl")}
    records = import_vllm_requests(SERVING_RUN / "requests.jsonl")
    assert len(records) == len(rows) == 300
    assert records[0].arrival_s == 0.0
    assert [r.arrival_s for r in records] == sorted(r.arrival_s for r in records)
    delays = []
    for record in records:
        row = rows[record.request_id]
        assert record.ok
        assert record.prompt_tokens == row["input_toks"] and record.output_tokens == row["output_toks"]
        delay = float(record.extra["queued_s"]) - record.arrival_s  # type: ignore[arg-type]
        delays.append(delay)
        assert record.arrival_s <= record.extra["queued_s"] <= record.scheduled_s  # type: ignore[operator]
        assert record.scheduled_s <= record.first_token_s <= record.last_token_s  # type: ignore[operator]
        # Engine-clock differences are kept exactly.
        assert record.last_token_s - record.first_token_s == pytest.approx(  # type: ignore[operator]
            row["last_token_ts"] - row["first_token_ts"], abs=1e-6)
        # Wall-clock arrival gaps are kept exactly.
        wall_gap = row["arrival_time"] - rows["bench-0"]["arrival_time"]
        assert record.arrival_s == pytest.approx(wall_gap, abs=1e-6)
    # The request with the smallest gap reached the engine at once.
    assert min(delays) == pytest.approx(0.0, abs=1e-9)


@needs_serving_run
def test_run_settings_come_from_meta_json() -> None:
    settings = vllm_run_settings(SERVING_RUN)
    assert settings["max_num_seqs"] == 256 and settings["max_num_batched_tokens"] == 2048
    assert settings["block_size"] == 16 and settings["gpu_memory_utilization"] == 0.9
    assert settings["num_gpu_blocks"] == 2588 and settings["enable_prefix_caching"] is True
    assert settings["tp"] == 1 and settings["model"] == "meta-llama/Llama-3.1-8B"


@needs_serving_run
def test_cli_imports_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "vllm"
    result = CliRunner().invoke(app, ["import-vllm", str(SERVING_RUN), "--out", str(out),
                                      "--slo", "ttft_p90=5s"])
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert len(run.records) == 300 and run.config["engine"]["num_gpu_blocks"] == 2588
    assert run.summary is not None and run.summary["completed"] == 300 and run.summary["slo"] == "ttft_p90=5s"


def _bench_result(tmp_path: Path, **changes: object) -> Path:
    data = {"date": "20250101-000000", "backend": "vllm", "model_id": "m", "request_rate": 4.0,
            "duration": 10.0, "num_prompts": 3,
            "input_lens": [10, 20, 30], "output_lens": [3, 0, 2],
            "ttfts": [0.5, 0.0, 0.25], "itls": [[0.1, 0.2], [], [0.05]],
            "generated_texts": ["a b c", "", "d e"], "errors": ["", "Bad Request\n(400)", ""]}
    data.update(changes)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    return path


def test_bench_serve_result_becomes_records(tmp_path: Path) -> None:
    records, facts = import_vllm_bench(_bench_result(tmp_path))
    ok, failed, short = records
    assert ok.ok and ok.prompt_tokens == 10 and ok.output_tokens == 3
    assert ok.ttft_s == pytest.approx(0.5) and ok.e2e_s == pytest.approx(0.8) and ok.itl_s == [0.1, 0.2]
    assert ok.tpot_s == pytest.approx(0.15)
    assert not failed.ok and failed.error == "bench_error: Bad Request (400)" and failed.output_tokens == 0
    assert short.e2e_s == pytest.approx(0.3)
    assert facts["request_rate"] == 4.0 and facts["arrival_times"].startswith("unknown")


def test_bench_serve_start_times_give_arrivals(tmp_path: Path) -> None:
    records, facts = import_vllm_bench(_bench_result(tmp_path, start_times=[100.0, 100.5, 101.25]))
    assert [r.arrival_s for r in records] == [0.0, 0.5, 1.25]
    assert records[2].first_token_s == pytest.approx(1.5)
    assert facts["arrival_times"] == "start_times"


def test_bench_serve_summary_uses_the_stated_duration(tmp_path: Path) -> None:
    summary = import_vllm(_bench_result(tmp_path), tmp_path / "run")
    assert summary.duration_s == 10.0 and summary.completed == 2 and summary.failed == 1
    assert summary.output_tokens_per_s == pytest.approx(5 / 10.0)
    assert read_run(tmp_path / "run").config["format"] == "vllm-bench-serve-json"


@pytest.mark.parametrize(("changes", "message"), [
    ({"ttfts": None}, "no list ttfts"),
    ({"output_lens": [1, 2]}, "has 2 entries, expected 3"),
])
def test_bad_bench_serve_results_are_user_errors(tmp_path: Path, changes: dict[str, object],
                                                message: str) -> None:
    with pytest.raises(UserError, match=message):
        import_vllm_bench(_bench_result(tmp_path, **changes))


def test_bad_jsonl_is_a_user_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"request_id": "a", "input_toks": 1, "output_toks": 1, "arrival_time": 1, '
                    '"queued_ts": 2}\n'
                    '{"request_id": "b", "input_toks": 1}\n')
    with pytest.raises(UserError, match=r"requests.jsonl:2 field 'output_toks'"):
        import_vllm_requests(path)


def test_missing_token_timestamps_become_failed_records(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"request_id": "a", "input_toks": 5, "output_toks": 4, "arrival_time": 1000.0, '
                    '"queued_ts": 50.0, "scheduled_ts": 50.1, "first_token_ts": null, '
                    '"last_token_ts": null}\n')
    (record,) = import_vllm_requests(path)
    assert not record.ok and record.error == "incomplete: no first_token_ts or last_token_ts"
    assert record.scheduled_s == pytest.approx(0.1)
