"""Trace readers: counts and values against the source files, formats, and error messages."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

from paretoserve.errors import UserError
from paretoserve.workload import Request, TraceWarning, load_trace, save_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACES = DATA / "traces"
VLLM_RUN = DATA / "serving_runs" / "rtx4090_llama3.1-8b_vllm0.19" / "requests.jsonl"


def _first_csv_rows(path: Path, count: int) -> list[list[str]]:
    lines = path.read_text().splitlines()[1:count + 1]
    return [line.split(",") for line in lines]


@pytest.mark.parametrize(("name", "expected"), [("azure-conv", 19_366), ("azure-code", 8_819)])
def test_bundled_azure_counts_match_sources(name: str, expected: int) -> None:
    # Request counts stated in ../shared/data/SOURCES.md.
    assert len(load_trace(name)) == expected


def test_bundled_mooncake_count_matches_file_lines() -> None:
    lines = (TRACES / "mooncake_conversation.jsonl").read_text().splitlines()
    assert len(load_trace("mooncake-conv")) == len([line for line in lines if line.strip()])


def test_azure_first_rows_and_times_equal_csv_text() -> None:
    trace = load_trace("azure-conv")
    rows = _first_csv_rows(TRACES / "azure2023_conv.csv", 3)
    for request, row in zip(trace, rows, strict=False):
        assert (request.prompt_tokens, request.output_tokens) == (int(row[1]), int(row[2]))
    # 18:15:46.6805900 -> 18:15:50.9951690 (first two rows), and -> 19:14:08.4025270 (last row).
    assert trace[0].arrival_s == 0.0
    assert trace[1].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert trace[-1].arrival_s == pytest.approx(58 * 60 + 21.721937, abs=1e-6)


def test_bundled_trace_equals_shared_csv() -> None:
    assert load_trace("azure-code") == load_trace(str(TRACES / "azure2023_code.csv"))


def test_traces_sorted_from_zero() -> None:
    for name in ("azure-code", "azure-conv", "mooncake-conv"):
        arrivals = [request.arrival_s for request in load_trace(name)]
        assert arrivals[0] == 0.0
        assert arrivals == sorted(arrivals)


def test_mooncake_hashes_and_milliseconds() -> None:
    trace = load_trace("mooncake-conv")
    first = json.loads((TRACES / "mooncake_conversation.jsonl").read_text().splitlines()[0])
    assert trace[0].prompt_tokens == first["input_length"]
    assert trace[0].output_tokens == first["output_length"]
    assert trace[0].prefix_hashes == tuple(first["hash_ids"])
    assert trace[0].prefix_block_tokens == 512
    assert trace[-1].arrival_s == pytest.approx(3536.999)  # last timestamp 3536999 ms
    # Equal timestamps keep file order.
    assert [request.request_id for request in trace[:3]] == ["0", "1", "2"]


def test_vllm_jsonl_arrivals_relative_to_first() -> None:
    trace = load_trace(str(VLLM_RUN))
    assert len(trace) == 300
    assert trace[0] == Request("bench-0", 0.0, 2358, 531)
    assert trace[1].request_id == "bench-1"
    assert trace[1].arrival_s == pytest.approx(1787267980.3478317 - 1787267980.0827403, abs=1e-6)


def test_peer_csv() -> None:
    trace = load_trace(str(TRACES / "peer_bench_conv_10k_4.5rps.csv"))
    assert len(trace) == 10_000
    assert (trace[0].prompt_tokens, trace[0].output_tokens) == (1409, 82)
    assert trace[1].arrival_s == pytest.approx(0.5871298872519335)
    assert (len(trace) - 1) / trace[-1].arrival_s == pytest.approx(4.5, rel=0.05)


def test_azure_2024_column_names_and_time_zones(tmp_path: Path) -> None:
    path = tmp_path / "azure2024.csv"
    path.write_text("timestamp,context_tokens,generated_tokens\n"
                    "2024-05-10 00:00:00.009930+00:00,100,10\n"
                    "2024-05-10 00:00:01.509930+00:00,200,20\n")
    trace = load_trace(str(path))
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in trace] == [
        (0.0, 100, 10), (1.5, 200, 20)]


def test_rows_out_of_order_are_sorted(tmp_path: Path) -> None:
    path = tmp_path / "peer.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n5,1,1\n2,2,2\n3,3,3\n")
    trace = load_trace(str(path))
    assert [(r.request_id, r.arrival_s) for r in trace] == [("1", 0.0), ("2", 1.0), ("0", 3.0)]


def test_burstgpt_skips_failures_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "5,ChatGPT,472,18,490,Conversation log\n"
                    "45,ChatGPT,1087,0,1087,Conversation log\n"
                    "118,GPT-4,417,276,693,API log\n")
    with pytest.warns(TraceWarning, match="skipped 1 request"):
        trace = load_trace(str(path))
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in trace] == [
        (0.0, 472, 18), (113.0, 417, 276)]


def test_own_jsonl_round_trip_and_gzip(tmp_path: Path) -> None:
    requests = [Request("a", 0.0, 10, 5, prefix_hashes=(1, 2), prefix_block_tokens=16, session_id="s",
                        slo_class="batch", priority=2),
                Request("b", 1.25, 7, 1)]
    path = tmp_path / "mine.jsonl"
    save_trace(requests, path)
    assert load_trace(str(path)) == requests
    packed = tmp_path / "mine.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert load_trace(str(packed)) == requests


def test_clean_trace_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trace("azure-code")


# --- errors -------------------------------------------------------------------------------------


def _message(path: Path, text: str, **kwargs: str) -> str:
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_trace(str(path), **kwargs)
    return str(info.value)


def test_bad_value_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47,abc,4\n")
    assert _message(path, text) == (f"{path}:3 field 'ContextTokens': expected an integer from 0 to 100,000,000, "
                                    "got 'abc'")


def test_bad_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    message = _message(path, "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
    assert message.startswith(f"{path}:2 field 'TIMESTAMP': expected a date-time")


def test_missing_column_lists_found_and_expected(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    message = _message(path, "TIMESTAMP,ContextTokens,Tokens\n2023-11-16 18:15:46,1,1\n", fmt="azure")
    assert "missing column(s) generatedtokens" in message
    assert "found columns TIMESTAMP, ContextTokens, Tokens" in message
    assert "expected timestamp, contexttokens, generatedtokens" in message


def test_unknown_header(tmp_path: Path) -> None:
    message = _message(tmp_path / "t.csv", "a,b,c\n1,2,3\n")
    assert "unknown CSV trace header" in message and "\n" not in message


def test_short_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    assert _message(path, "arrived_at,num_prefill_tokens,num_decode_tokens\n1,2\n") == (
        f"{path}:2: expected 3 columns, got 2")


def test_jsonl_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = '{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [1]}\n'
    assert _message(path, good + "{oops\n").startswith(f"{path}:2: not valid JSON")
    assert _message(path, good + '{"timestamp": 3, "input_length": 5}\n').startswith(
        f"{path}:2 field 'output_length': missing")
    bad_hashes = '{"timestamp": 3, "input_length": 5, "output_length": 1, "hash_ids": "x"}\n'
    assert _message(path, good + bad_hashes).startswith(f"{path}:2 field 'hash_ids': expected a list")
    assert _message(path, good + '{"timestamp": 3, "input_length": 5.5, "output_length": 1}\n').startswith(
        f"{path}:2 field 'input_length': expected an integer from 0 to 100,000,000")


def test_unknown_name_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a bundled trace .*azure-conv"):
        load_trace("azure-nope")
    assert "empty trace" in _message(tmp_path / "empty.csv", "")
    with pytest.raises(UserError, match="unknown trace format"):
        load_trace(str(TRACES / "azure2023_code.csv"), fmt="parquet")
