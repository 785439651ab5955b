"""The bounded reader of input files: one-line errors naming file and line, memory bounded on huge lines."""

from __future__ import annotations

import gzip
import time
import tracemalloc
from pathlib import Path

import pytest

from paretoserve.errors import UserError
from paretoserve.runs import read_run
from paretoserve.textfiles import MAX_LINE_BYTES, read_json, read_text, text_lines
from paretoserve.workload import load_trace


def _error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    return str(info.value)


def test_huge_single_line_is_refused_after_reading_only_the_limit(tmp_path: Path) -> None:
    # A 50 MB file of one line (the user's 2 GB single-line file, smaller): refused at the 1 MiB
    # limit, naming the file and line, without holding the line in memory.
    path = tmp_path / "one-line.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1, "pad": "')
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            handle.write(chunk)
        handle.write(b'"}\n')
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = _error(lambda: load_trace(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (f"{path}:1: line longer than 1,048,576 bytes; expected one record per line "
                       "(is this the right file?)")
    assert peak < 4 * MAX_LINE_BYTES  # the 1 MiB read plus its decoded copy, not 50 MB
    assert time.perf_counter() - start < 2.0


def test_line_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"a" * 10 + b"\n" + b"b" * 11 + b"\n")
    lines = text_lines(path, max_line_bytes=10)
    assert next(lines) == (1, "a" * 10 + "\n")
    with pytest.raises(UserError, match=r":2: line longer than 10 bytes"):
        next(lines)


def test_binary_and_non_utf8_files_name_file_and_line(tmp_path: Path) -> None:
    binary = tmp_path / "trace.csv"
    binary.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3\n\x00\x01\x02\n")
    assert _error(lambda: load_trace(str(binary))) == (
        f"{binary}:3: binary data (a NUL byte); expected a UTF-8 text file")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,caf\xe9\n".encode("latin-1"))
    assert _error(lambda: load_trace(str(latin))).startswith(f"{latin}:2: not UTF-8 text (byte 8 ")


def test_bom_is_dropped_and_gzip_errors_are_user_errors(tmp_path: Path) -> None:
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2}\n')
    assert load_trace(str(bom))[0].prompt_tokens == 3
    fake = tmp_path / "fake.csv.gz"
    fake.write_bytes(b"not gzip at all")
    assert _error(lambda: load_trace(str(fake))) == f"{fake}:1: cannot read (a corrupt or truncated gzip file)"
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2}\n' * 100)[:-12])
    assert "corrupt or truncated gzip" in _error(lambda: load_trace(str(cut)))


def test_whole_file_readers(tmp_path: Path) -> None:
    assert _error(lambda: read_text(tmp_path)) == f"{tmp_path}: is a folder; expected a file"
    missing = tmp_path / "none"
    assert _error(lambda: read_text(missing)) == f"{missing}: cannot read (No such file or directory)"
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 101)
    assert _error(lambda: read_text(big, max_bytes=100)) == f"{big}: larger than 100 bytes; expected a small text file"
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    assert _error(lambda: read_json(deep)).startswith(f"{deep}: not valid JSON here (maximum recursion depth")


def test_run_folder_with_binary_records(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert _error(lambda: read_run(tmp_path)) == (
        f"{tmp_path / 'requests.jsonl'}:1: not UTF-8 text (byte 1 of the line cannot be decoded); "
        "expected a UTF-8 text file")
