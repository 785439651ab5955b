"""Run folders: written atomically, partial runs on failure, read back, malformed lines reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paretoserve.errors import UserError
from paretoserve.metrics import RequestRecord, parse_slo, summarize
from paretoserve.runs import RunWriter, read_run

CONFIG = {"command": "simulate", "model": "Meta-Llama-3.1-8B", "rate": 8.0, "seed": 0,
          "engine": {"max_num_seqs": 256, "block_size": 16}}


def _records(count: int) -> list[RequestRecord]:
    return [RequestRecord(f"r{i}", float(i), 100, 10, scheduled_s=i + 0.05, first_token_s=i + 0.2,
                          last_token_s=i + 1.1, replica=0, itl_s=[0.1] * 9) for i in range(count)]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_and_read_back(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    records = _records(5)
    summary = summarize(records, parse_slo("ttft_p90=1s"), estimated=True)
    with RunWriter(out, CONFIG, keep_partial=False, flush_every=2) as writer:
        for record in records:
            writer.add(record)
        assert writer.finish(summary) == out
    run = read_run(out)
    assert run.config == CONFIG
    assert run.records == records
    assert run.summary == json.loads(summary.model_dump_json())
    assert run.summary is not None and run.summary["partial"] is False
    # config.yaml keeps the given key order; requests.jsonl is one to_json() line per record.
    assert (out / "config.yaml").read_text().splitlines()[0] == "command: simulate"
    assert (out / "requests.jsonl").read_text() == "".join(r.to_json() + "\n" for r in records)
    assert _leftovers(out.parent) == []


def test_leaving_the_block_finishes_with_summary_from_records(tmp_path: Path) -> None:
    out = tmp_path / "b"
    with RunWriter(out, CONFIG, keep_partial=False) as writer:
        for record in _records(3):
            writer.add(record)
    run = read_run(out)
    assert run.summary is not None and run.summary["requests"] == 3 and run.summary["completed"] == 3


def test_records_reach_disk_as_they_are_added(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "c", CONFIG, keep_partial=True) as writer:
        writer.add(_records(1)[0])
        (partial_file,) = tmp_path.glob(".c.*.partial/requests.jsonl")
        assert partial_file.read_text().count("\n") == 1


def test_partial_run_on_exception_is_valid(tmp_path: Path) -> None:
    out = tmp_path / "d"
    slo = parse_slo("ttft_p90=1s")
    with pytest.raises(RuntimeError, match="engine exploded"):
        with RunWriter(out, CONFIG, keep_partial=True, slo=slo, estimated=True) as writer:
            for record in _records(3):
                writer.add(record)
            raise RuntimeError("engine exploded")
    run = read_run(out)
    assert len(run.records) == 3
    assert run.config == CONFIG
    assert run.summary is not None
    assert run.summary["partial"] is True and run.summary["estimated"] is True
    assert run.summary["requests"] == 3 and run.summary["slo_attainment"] == 1.0
    assert run.summary["ttft"]["p50"] == pytest.approx(0.2)
    assert _leftovers(tmp_path) == []


def test_partial_run_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        with RunWriter(out, CONFIG, keep_partial=True) as writer:
            writer.add(_records(1)[0])
            raise KeyboardInterrupt
    run = read_run(out)
    assert run.summary is not None and run.summary["partial"] is True and len(run.records) == 1


def test_no_partial_leaves_nothing_and_keeps_the_old_run(tmp_path: Path) -> None:
    out = tmp_path / "f"
    with pytest.raises(KeyboardInterrupt):
        with RunWriter(out, CONFIG, keep_partial=False) as writer:
            writer.add(_records(1)[0])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # An existing run is replaced only by a complete one.
    with RunWriter(out, CONFIG, keep_partial=False) as writer:
        writer.add(_records(1)[0])
    with pytest.raises(ValueError):
        with RunWriter(out, {**CONFIG, "other": True}, keep_partial=False) as writer:
            writer.add(_records(2)[1])
            raise ValueError("bad")
    assert read_run(out).config == CONFIG
    assert _leftovers(tmp_path) == []


def test_add_after_finish_is_an_error(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "g", CONFIG, keep_partial=False) as writer:
        writer.finish()
        with pytest.raises(RuntimeError):
            writer.add(_records(1)[0])


# --- reading bad folders --------------------------------------------------------------------------


def _bad_run(tmp_path: Path, lines: list[str]) -> str:
    folder = tmp_path / "bad"
    folder.mkdir()
    good = _records(1)[0].to_json()
    (folder / "requests.jsonl").write_text("\n".join([good, *lines]) + "\n")
    with pytest.raises(UserError) as info:
        read_run(folder)
    return str(info.value)


def test_malformed_json_line(tmp_path: Path) -> None:
    message = _bad_run(tmp_path, ['{"request_id": "x",'])
    assert message.startswith(f"{tmp_path / 'bad' / 'requests.jsonl'}:2: not valid JSON")


def test_missing_field(tmp_path: Path) -> None:
    message = _bad_run(tmp_path, ['{"request_id": "x", "arrival_s": 1.0, "prompt_tokens": 3}'])
    assert message == f"{tmp_path / 'bad' / 'requests.jsonl'}:2 field 'output_tokens': missing"


def test_wrong_type(tmp_path: Path) -> None:
    line = '{"request_id": "x", "arrival_s": "soon", "prompt_tokens": 3, "output_tokens": 1}'
    message = _bad_run(tmp_path, [line])
    assert message == (f"{tmp_path / 'bad' / 'requests.jsonl'}:2 field 'arrival_s': "
                       "expected a finite number of seconds, got 'soon'")


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="requests.jsonl is missing"):
        read_run(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        read_run(tmp_path / "nowhere")


def test_read_run_without_summary_or_config(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_text(_records(1)[0].to_json() + "\n")
    run = read_run(tmp_path)
    assert run.config == {} and run.summary is None and len(run.records) == 1
