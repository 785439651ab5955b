"""Property-based fuzzing of every reader of user input: a valid object or a `UserError`, nothing else.

Each reader gets at least 1,000 generated inputs that mix valid-looking structure (the right header,
the right keys, a bundled config or device file) with garbage (binary bytes, NUL, invalid UTF-8,
huge and negative numbers, NaN and infinity, wrong types, missing fields, unicode, corrupt gzip).
The property: the reader returns an object that later code can use (checked on the result), or
raises `UserError` with a one-line message; any other exception fails the test. Readers write
nothing: the folder holding the input has the same files before and after.
"""

from __future__ import annotations

import gzip
import json
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import paretoserve
from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.model import ModelSpec, parse_config
from paretoserve.errors import UserError
from paretoserve.metrics import parse_slo, summarize
from paretoserve.perf.profile import FORMAT, Profile, load_profile
from paretoserve.runs import Run, read_run
from paretoserve.workload import Request, TraceWarning, iter_workload, load_trace, parse_lengths
from paretoserve.workload.request import MAX_TOKENS

SRC = Path(paretoserve.__file__).parent
FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """One scratch folder for the module (hypothesis runs many examples per test function)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _dump(data: object, **options: Any) -> str:
    """YAML text of `data` (libyaml's emitter when present: the fuzz loop writes thousands)."""
    return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), **options)


def _listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def _user_error_or(read: Callable[[], Any], where: Path) -> Any:
    """`read()`'s result, or None when it raised a one-line UserError; the folder `where` must
    hold the same files afterwards."""
    before = _listing(where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)
            result = read()
    except UserError as exc:
        assert str(exc).isprintable() and str(exc)
        result = None
    event("read" if result is not None else "UserError")  # shown by --hypothesis-show-statistics
    assert _listing(where) == before, "a reader wrote or removed files"
    return result


# --- building blocks ----------------------------------------------------------------------------

GARBAGE_TEXT = st.sampled_from([
    "", " ", "nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "1.5", "1e5", "00", "+3", "0x10", "½", "١٢",
    "\x00", '"', "'", ",", "{", "[", "null", "true", "2023-11-16 18:15:46.68", "2023-11-16T18:15:46+00:00",
    "2023-13-45", "9" * 40, "-" * 3, "é", "\ufeff", "\u2028", "😀"])
NUMBER_TEXT = st.one_of(st.integers(-10, 10**9).map(str), st.floats(allow_nan=True).map(repr),
                        st.integers(-(10**30), 10**30).map(str))
CELL = st.one_of(NUMBER_TEXT, GARBAGE_TEXT, st.text(max_size=6))
VALUE = st.one_of(
    st.integers(-5, 5000), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), GARBAGE_TEXT, st.text(max_size=6),
    st.lists(st.integers(-3, 2**70), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def corrupted(draw: st.DrawFn, text: str) -> bytes:
    """`text` as UTF-8, sometimes with random bytes spliced in or a BOM in front."""
    data = text.encode("utf-8", "surrogatepass")
    choice = draw(st.integers(0, 5))
    if choice == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif choice == 1:
        data = b"\xef\xbb\xbf" + data
    return data


def _write(path: Path, data: bytes, compress: bool) -> None:
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)


# --- traces -------------------------------------------------------------------------------------

CSV_HEADERS = [
    "TIMESTAMP,ContextTokens,GeneratedTokens", "Timestamp,Model,Request tokens,Response tokens,Total tokens,"
    "Log Type", "arrived_at,num_prefill_tokens,num_decode_tokens", "timestamp,prompt_tokens", "a,b,c", ""]
JSONL_KEYS = {
    "mooncake": ("timestamp", "input_length", "output_length", "hash_ids"),
    "vllm": ("request_id", "input_toks", "output_toks", "arrival_time"),
    "jsonl": ("arrival_s", "prompt_tokens", "output_tokens", "request_id", "prefix_hashes",
              "prefix_block_tokens", "session_id", "slo_class", "priority"),
}


def _check_trace(requests: list[Request] | None) -> None:
    if requests is None:
        return
    assert requests and requests[0].arrival_s == 0.0
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals) and all(math.isfinite(a) for a in arrivals)
    for request in requests:
        assert type(request.prompt_tokens) is int and 1 <= request.prompt_tokens <= MAX_TOKENS
        assert type(request.output_tokens) is int and 1 <= request.output_tokens <= MAX_TOKENS
        assert request.prefix_block_tokens >= 1
        assert all(type(h) is int for h in request.prefix_hashes)


@st.composite
def csv_traces(draw: st.DrawFn) -> str:
    header = draw(st.one_of(st.sampled_from(CSV_HEADERS), st.text(max_size=20)))
    width = max(1, header.count(",") + 1)
    rows = draw(st.lists(st.lists(CELL, min_size=0, max_size=width + 1), max_size=6))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join([header, *(",".join(row) for row in rows)]) + draw(st.sampled_from(["", newline]))


@st.composite
def jsonl_traces(draw: st.DrawFn) -> str:
    keys = JSONL_KEYS[draw(st.sampled_from(sorted(JSONL_KEYS)))]
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        record = {key: draw(st.one_of(st.integers(0, 5000), VALUE)) for key in keys
                  if draw(st.integers(0, 9))}  # each key missing now and then
        text = json.dumps(record, allow_nan=True)
        lines.append(draw(st.sampled_from([text, text, text, text[:-1], "[1]", "", '"x"', "{" * 3])))
    return "\n".join(lines)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_trace_readers(folder: Path, kind: str) -> None:
    strategy = csv_traces() if kind == "csv" else jsonl_traces()

    @FUZZ
    @given(text=strategy, data=st.data(), fmt=st.sampled_from([None, None, "azure", "burstgpt", "peer",
                                                               "mooncake", "vllm", "jsonl"]),
           compress=st.booleans())
    def check(text: str, data: st.DataObject, fmt: str | None, compress: bool) -> None:
        path = folder / f"trace.{kind}{'.gz' if compress else ''}"
        _write(path, data.draw(corrupted(text)), compress)
        _check_trace(_user_error_or(lambda: load_trace(str(path), fmt=fmt), folder))

    check()


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".jsonl", ".gz", ".csv.gz", ""]))
def test_trace_reader_on_raw_bytes(folder: Path, data: bytes, suffix: str) -> None:
    # Random bytes, including files named .gz that are not gzip and truncated gzip streams.
    path = folder / f"raw{suffix}"
    path.write_bytes(data)
    _check_trace(_user_error_or(lambda: load_trace(str(path)), folder))


# --- model config.json --------------------------------------------------------------------------

_CONFIGS = {name: json.loads((SRC / "catalog" / "models" / f"{name}.json").read_text())
            for name in ("Meta-Llama-3.1-8B", "DeepSeek-V3", "Nemotron-H-56B-Base-8K", "gpt-oss-20b",
                         "gemma-4-26B-A4B", "Qwen3-30B-A3B")}
_CONFIG_KEYS = sorted({key for raw in _CONFIGS.values() for key, value in
                       {**raw, **(raw.get("text_config") or {})}.items()
                       if not isinstance(value, dict)} | {"text_config", "quantization_config"})


def _check_model(model: ModelSpec | None) -> None:
    if model is None:
        return
    assert 1 <= model.num_layers <= 10_000 and model.hidden_size >= 1
    assert model.params.total > 0 and model.params.active > 0
    assert 0 <= model.kv_bytes_per_token() < 1e12
    assert math.isfinite(model.kv_bytes_per_sequence(4096))


@FUZZ
@given(base=st.sampled_from(sorted(_CONFIGS)), changes=st.dictionaries(st.sampled_from(_CONFIG_KEYS), VALUE,
                                                                         max_size=4),
       drop=st.sets(st.sampled_from(_CONFIG_KEYS), max_size=3), data=st.data())
def test_model_config_parser(folder: Path, base: str, changes: dict[str, Any], drop: set[str],
                             data: st.DataObject) -> None:
    raw = {k: v for k, v in {**_CONFIGS[base], **changes}.items() if k not in drop}
    if isinstance(raw.get("text_config"), dict):  # mutate the text model too, where there is one
        raw["text_config"] = {**raw["text_config"], **changes}
    path = folder / "config.json"
    path.write_bytes(data.draw(corrupted(json.dumps(raw, allow_nan=True))))
    _check_model(_user_error_or(lambda: parse_config(path, name="fuzz"), folder))


# --- SLO, length and arrival strings ------------------------------------------------------------

_SLO_PARTS = st.one_of(
    st.builds(lambda m, p, v, u: f"{m}_p{p}={v}{u}", st.sampled_from(["ttft", "tpot", "e2e", "itl", "TTFT", "x"]),
              st.sampled_from(["50", "90", "95", "99", "80", "9" * 30, ""]), NUMBER_TEXT | GARBAGE_TEXT,
              st.sampled_from(["", "s", "ms", "us", "µs", "h", " ms"])),
    st.builds(lambda v: f"attainment={v}", NUMBER_TEXT | GARBAGE_TEXT), st.text(max_size=8))


@FUZZ
@given(parts=st.lists(_SLO_PARTS, max_size=4), sep=st.sampled_from([",", ", ", ";"]))
def test_slo_parser(parts: list[str], sep: str) -> None:
    try:
        slo = parse_slo(sep.join(parts))
    except UserError as exc:
        assert str(exc).isprintable()
        return
    assert 0 < slo.attainment_target <= 1 and slo.targets
    assert all(t.threshold_s > 0 and math.isfinite(t.threshold_s) for t in slo.targets)
    assert parse_slo(str(slo)) == slo


_LENGTH_SPECS = st.one_of(
    NUMBER_TEXT, GARBAGE_TEXT, st.text(max_size=10),
    st.builds(lambda kind, a, b: f"{kind}:{a}:{b}", st.sampled_from(["uniform", "lognormal", "fixed", "LOGNORMAL"]),
              NUMBER_TEXT | GARBAGE_TEXT, NUMBER_TEXT | GARBAGE_TEXT),
    st.builds(lambda a: f"fixed:{a}", NUMBER_TEXT | GARBAGE_TEXT))


@FUZZ
@given(spec=_LENGTH_SPECS)
def test_length_spec_parser(spec: str) -> None:
    try:
        lengths = parse_lengths(spec)
    except UserError as exc:
        assert str(exc).isprintable()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow inside numpy would be a bug too
        drawn = lengths.sample(np.random.default_rng(0), 50)
    assert drawn.dtype == np.int64 and drawn.min() >= 1 and drawn.max() <= MAX_TOKENS


_ARRIVALS = st.one_of(
    st.sampled_from(["poisson", "constant", "trace", "gamma", "ramp", "POISSON", ""]), st.text(max_size=8),
    st.builds(lambda a: f"gamma:{a}", NUMBER_TEXT | GARBAGE_TEXT),
    st.builds(lambda a, b: f"ramp:{a}:{b}", NUMBER_TEXT | GARBAGE_TEXT, NUMBER_TEXT | GARBAGE_TEXT))


@FUZZ
@given(arrival=_ARRIVALS, rate=st.one_of(st.none(), st.floats(allow_nan=True)),
       duration=st.one_of(st.none(), st.floats(0.01, 1e6)))
def test_arrival_spec_parser(arrival: str, rate: float | None, duration: float | None) -> None:
    try:
        workload = iter_workload(None, arrival=arrival, rate=rate, requests=20, duration_s=duration,
                                 prompt="10", output="5")
        requests = list(islice(workload, 25))
    except UserError as exc:
        assert str(exc).isprintable()
        return
    assert len(requests) <= 20
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals) and all(math.isfinite(a) and a >= 0 for a in arrivals)
    assert duration is None or all(a < duration for a in arrivals)


# --- run folders --------------------------------------------------------------------------------

_RECORD = {"request_id": "r0", "arrival_s": 0.5, "prompt_tokens": 100, "output_tokens": 10, "scheduled_s": 0.6,
           "first_token_s": 0.7, "last_token_s": 1.6, "preemptions": 0, "replica": 0, "error": None,
           "itl_s": [0.1] * 9, "cached_prompt_tokens": 0}
_SUMMARY = json.loads(summarize([]).model_dump_json())


@st.composite
def run_folders(draw: st.DrawFn) -> tuple[bytes, bytes | None, bytes | None]:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        changes = draw(st.dictionaries(st.sampled_from([*_RECORD, "extra"]), VALUE, max_size=2))
        record = {k: v for k, v in {**_RECORD, **changes}.items() if draw(st.integers(0, 15))}
        lines.append(json.dumps(record, allow_nan=True))
    requests = draw(corrupted("\n".join(lines)))
    config = draw(st.one_of(st.none(), st.builds(_dump, st.dictionaries(st.text(max_size=4), VALUE,
                                                                                max_size=3)),
                            st.text(max_size=20), st.sampled_from(["a: [", "- 1", "a: 2023-13-01", "{{", "\t"])))
    summary_changes = draw(st.dictionaries(st.sampled_from(sorted(_SUMMARY)), VALUE, max_size=2))
    summary = draw(st.one_of(st.none(), st.just(json.dumps({**_SUMMARY, **summary_changes}, allow_nan=True)),
                             st.text(max_size=12)))
    return (requests, None if config is None else draw(corrupted(config)),
            None if summary is None else draw(corrupted(summary)))


def _check_run(run: Run | None) -> None:
    if run is None:
        return
    assert isinstance(run.config, dict) and (run.summary is None or isinstance(run.summary, dict))
    summary = summarize(run.records)  # the records are usable by the code that reads them
    assert summary.requests == len(run.records)


@FUZZ
@given(files=run_folders())
def test_run_folder_reader(folder: Path, files: tuple[bytes, bytes | None, bytes | None]) -> None:
    run_dir = folder / "run"
    run_dir.mkdir(exist_ok=True)
    for name, content in zip(("requests.jsonl", "config.yaml", "summary.json"), files, strict=True):
        (run_dir / name).unlink(missing_ok=True)
        if content is not None:
            (run_dir / name).write_bytes(content)
    _check_run(_user_error_or(lambda: read_run(run_dir), folder))


# --- calibrated profiles and hardware files -----------------------------------------------------

_PROFILE = {"format": FORMAT, "kind": "run", "device": "h100_sxm", "engine": "vllm", "engine_version": "0.19.0",
            "source": "fuzz", "created": "2025-06-01T12:00:00Z",
            "coefficients": {"compute_scale": 1.1, "memory_scale": 0.9, "step_overhead_s": 0.001,
                             "token_overhead_s": 1e-6}, "fit": {}}
_PROFILE_KEYS = [*_PROFILE, "grids_file", "grids_sha256", "grids", "transfer", "notes"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(_PROFILE_KEYS), VALUE, max_size=3),
       coefficient=st.dictionaries(st.sampled_from([*_PROFILE["coefficients"], "other"]), VALUE, max_size=2),
       grids=st.one_of(st.none(), st.binary(max_size=40)), data=st.data())
def test_profile_reader(folder: Path, changes: dict[str, Any], coefficient: dict[str, Any],
                        grids: bytes | None, data: st.DataObject) -> None:
    doc = {**_PROFILE, "coefficients": {**_PROFILE["coefficients"], **coefficient}, **changes}
    if grids is not None:  # a grids file that exists but holds garbage
        (folder / "p.grids.parquet").write_bytes(grids)
        doc["grids_file"] = "p.grids.parquet"
    path = folder / "profile.yaml"
    path.write_bytes(data.draw(corrupted(_dump(doc, allow_unicode=True))))
    profile = _user_error_or(lambda: load_profile(path), folder)
    if profile is not None:
        assert isinstance(profile, Profile) and profile.coefficients.compute_scale > 0


_DEVICE = yaml.safe_load((SRC / "catalog" / "hardware" / "h100_sxm.yaml").read_text())


@FUZZ
@given(changes=st.dictionaries(st.sampled_from([*_DEVICE, "base", "flops.fp8"]), VALUE, max_size=3),
       partial=st.booleans(), data=st.data())
def test_hardware_file_reader(folder: Path, changes: dict[str, Any], partial: bool,
                              data: st.DataObject) -> None:
    doc = {"base": "h100_sxm", **changes} if partial else {**_DEVICE, **changes}
    if "flops.fp8" in doc:
        doc["flops"] = {**_DEVICE["flops"], "fp8": doc.pop("flops.fp8")}
    path = folder / "device.yaml"
    path.write_bytes(data.draw(corrupted(_dump(doc, allow_unicode=True))))
    device = _user_error_or(lambda: load_device(str(path)), folder)
    if device is not None:
        assert isinstance(device, DeviceSpec) and device.peak_flops("bf16") > 0
