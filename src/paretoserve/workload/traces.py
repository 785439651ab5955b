"""Trace readers: public LLM-serving traces and our own JSONL, as lists of `Request`.

Formats (`fmt` names), detected from the header / first line when not given:

- ``azure``    Azure LLM inference trace 2023 and 2024 CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens``
  (column names matched case- and punctuation-insensitively; timestamps are ISO date-times or seconds).
- ``burstgpt`` BurstGPT CSV: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``
  (timestamps in seconds).
- ``mooncake`` Mooncake JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``
  (one hash per 512-token prompt block, becomes ``prefix_hashes``).
- ``vllm``     vLLM-style per-request JSONL: ``request_id``, ``input_toks``, ``output_toks``,
  ``arrival_time`` (seconds).
- ``peer``     the peer simulators' CSV: ``arrived_at`` (s), ``num_prefill_tokens``, ``num_decode_tokens``.
- ``jsonl``    our own JSONL: the `Request` fields by name (``arrival_s``, ``prompt_tokens``,
  ``output_tokens`` required; ``request_id``, ``prefix_hashes``, ``prefix_block_tokens``,
  ``session_id``, ``slo_class``, ``priority`` optional; other keys ignored, so a run's
  ``requests.jsonl`` can be replayed).

Every reader re-bases arrival times so that the first request arrives at 0 s and returns the
requests sorted by arrival (ties keep file order). Rows with 0 prompt or 0 output tokens (failed
requests in production logs) are skipped with one `TraceWarning` per file; any other bad value is a
`UserError` naming the file, line and field. Request ids are the source's ids where it has them,
otherwise the 0-based row index in the file. Files ending in ``.gz`` are read through gzip. Token
counts above `MAX_TOKENS` are refused; lines longer than `textfiles.MAX_LINE_BYTES`, binary files and
files that are not UTF-8 are `UserError`s naming the file (see `paretoserve.textfiles`).
"""

from __future__ import annotations

import csv
import functools
import json
import re
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from paretoserve.atomic import write_text_atomic
from paretoserve.errors import UserError, shown
from paretoserve.jsonlines import iter_json_lines
from paretoserve.textfiles import parse_json, text_lines
from paretoserve.workload.request import MAX_TOKENS, Request

DATA_DIR = Path(__file__).parent / "data"

#: Bundled traces: name -> (file under `DATA_DIR`, format).
BUNDLED: dict[str, tuple[str, str]] = {
    "azure-code": ("azure2023_code.csv.gz", "azure"),
    "azure-conv": ("azure2023_conv.csv.gz", "azure"),
    "mooncake-conv": ("mooncake_conversation.jsonl.gz", "mooncake"),
}

MOONCAKE_BLOCK_TOKENS = 512

#: What a reader yields per request: (arrival in seconds on the source's clock, request id, prompt
#: tokens, output tokens, further `Request` keyword arguments or None).
_Row = tuple[float, str, int, int, dict[str, Any] | None]


class TraceWarning(UserWarning):
    """Something in a trace was skipped (the message says what and how many)."""


class _Source:
    """A trace file and the name that messages show for it."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text) of every line (through gzip for `.gz` files; see `text_lines`)."""
        return text_lines(self.path, self.label)

    def error(self, message: str, line: int | None = None, field: str | None = None) -> UserError:
        """A `UserError` located in this trace."""
        return UserError(message, file=self.label, line=line, field=field)


class _Skipped:
    """Counts rows skipped for having 0 prompt or output tokens."""

    def __init__(self) -> None:
        self.count = 0

    def warn(self, source: _Source) -> None:
        """Emit one `TraceWarning` when anything was skipped."""
        if self.count:
            warnings.warn(
                f"{source.label}: skipped {self.count} request(s) with 0 prompt or 0 output tokens "
                "(failed requests)", TraceWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Field parsing


def _count(value: object, source: _Source, line: int, field: str) -> int:
    """A token count: an integer in [0, MAX_TOKENS] given as int, integral float or numeric text."""
    number = value if type(value) is int else _as_int(value)
    if number is None or not 0 <= number <= MAX_TOKENS:
        raise source.error(f"expected an integer from 0 to {MAX_TOKENS:,}, got {shown(value)}", line, field)
    return number


def _as_int(value: object) -> int | None:
    """`value` as an int when it is one (or integral float / numeric text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 30:
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _seconds(value: object, source: _Source, line: int, field: str,
             expected: str = "a number of seconds") -> float:
    """A finite number of seconds (int, float or numeric text)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or number != number or number in (float("inf"), float("-inf")):
        raise source.error(f"expected {expected}, got {shown(value)}", line, field)
    return number


class _Clock:
    """Turns trace timestamps into seconds relative to the first one parsed.

    Plain numbers are taken as seconds; anything else must be an ISO date-time (as in the Azure
    traces, with or without a time zone). Differences of date-times are exact to the microsecond.
    """

    def __init__(self, source: _Source, field: str) -> None:
        self.source = source
        self.field = field
        self.origin: datetime | None = None

    def seconds(self, text: str, line: int) -> float:
        """`text` as seconds after the first date-time of the trace (or as plain seconds)."""
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return _seconds(text, self.source, line, self.field, "a date-time or seconds")
        if self.origin is None:
            self.origin = moment
        try:
            return (moment - self.origin).total_seconds()
        except TypeError:
            raise self.source.error(
                f"time zone given on some rows and not on others, got {shown(text)}", line, self.field) from None


# ---------------------------------------------------------------------------------------------
# CSV formats


def _norm(name: str) -> str:
    """Column name reduced to lowercase letters and digits, for tolerant matching."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


#: CSV format -> {role: accepted normalised column names}.
_CSV_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "azure": {
        "time": ("timestamp",),
        "prompt": ("contexttokens", "inputtokens", "prompttokens"),
        "output": ("generatedtokens", "outputtokens"),
    },
    "burstgpt": {
        "time": ("timestamp",),
        "prompt": ("requesttokens",),
        "output": ("responsetokens",),
    },
    "peer": {
        "time": ("arrivedat",),
        "prompt": ("numprefilltokens",),
        "output": ("numdecodetokens",),
    },
}


def _column_indexes(header: list[str], fmt: str, source: _Source) -> dict[str, tuple[int, str]]:
    """Map each role of `fmt` to (column index, column name), or fail listing what was found."""
    normalised = [_norm(name) for name in header]
    found: dict[str, tuple[int, str]] = {}
    missing: list[str] = []
    for role, names in _CSV_COLUMNS[fmt].items():
        index = next((i for i, name in enumerate(normalised) if name in names), None)
        if index is None:
            missing.append(names[0])
        else:
            found[role] = (index, header[index].strip())
    if missing:
        expected = ", ".join(names[0] for names in _CSV_COLUMNS[fmt].values())
        raise source.error(
            f"missing column(s) {', '.join(missing)} for a {fmt} trace; found columns "
            f"{', '.join(h.strip() for h in header)[:120] or '(none)'}; expected {expected} "
            "(case and punctuation ignored)", 1)
    return found


def _csv_rows(source: _Source) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV row; a malformed row is an error naming its line."""
    reader = csv.reader(text for _, text in source.lines())
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise source.error(f"not valid CSV ({exc})", reader.line_num) from None
        yield reader.line_num, row


def _read_csv(source: _Source, fmt: str) -> list[_Row]:
    """Read one of the CSV formats in `_CSV_COLUMNS`."""
    reader = _csv_rows(source)
    _, header = next(reader, (0, None))
    if header is None:
        raise source.error("empty trace: no header line")
    columns = _column_indexes(header, fmt, source)
    time_index, time_name = columns["time"]
    prompt_index, prompt_name = columns["prompt"]
    output_index, output_name = columns["output"]
    if fmt == "azure":
        seconds = _Clock(source, time_name).seconds
    else:
        def seconds(text: str, line: int) -> float:
            return _seconds(text, source, line, time_name)
    needed = max(time_index, prompt_index, output_index) + 1
    rows: list[_Row] = []
    skipped = _Skipped()
    for row_index, (line, row) in enumerate(reader):
        if len(row) < needed:
            if not row:
                continue
            raise source.error(f"expected {len(header)} columns, got {len(row)}", line)
        prompt = _count(row[prompt_index], source, line, prompt_name)
        output = _count(row[output_index], source, line, output_name)
        if prompt == 0 or output == 0:
            skipped.count += 1
            continue
        rows.append((seconds(row[time_index], line), str(row_index), prompt, output, None))
    skipped.warn(source)
    return rows


# ---------------------------------------------------------------------------------------------
# JSONL formats


def _json_lines(source: _Source) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; anything but a JSON object is an error."""
    for line, data in iter_json_lines(source.path, source.label):
        if not isinstance(data, dict):
            raise source.error(f"expected a JSON object, got {type(data).__name__}", line)
        yield line, data


def _get(data: dict[str, Any], key: str, source: _Source, line: int) -> Any:
    """`data[key]`, or an error naming the missing field and the keys found."""
    try:
        return data[key]
    except KeyError:
        raise source.error(f"missing; keys found: {', '.join(data) or '(none)'}", line, key) from None


def _hashes(value: object, source: _Source, line: int, field: str) -> tuple[int, ...]:
    """A list of integer block hashes."""
    if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise source.error(f"expected a list of integers, got {shown(value)}", line, field)
    return tuple(value)


def _read_mooncake(source: _Source) -> list[_Row]:
    """Mooncake JSONL: timestamp in ms, lengths, 512-token prefix block hashes."""
    rows: list[_Row] = []
    skipped = _Skipped()
    for index, (line, data) in enumerate(_json_lines(source)):
        arrival = _seconds(_get(data, "timestamp", source, line), source, line, "timestamp") / 1000.0
        prompt = _count(_get(data, "input_length", source, line), source, line, "input_length")
        output = _count(_get(data, "output_length", source, line), source, line, "output_length")
        hashes = _hashes(data.get("hash_ids", []), source, line, "hash_ids")
        if prompt == 0 or output == 0:
            skipped.count += 1
            continue
        rows.append((arrival, str(index), prompt, output,
                     {"prefix_hashes": hashes, "prefix_block_tokens": MOONCAKE_BLOCK_TOKENS}))
    skipped.warn(source)
    return rows


def _read_vllm(source: _Source) -> list[_Row]:
    """vLLM-style per-request JSONL: request_id, input_toks, output_toks, arrival_time (s)."""
    rows: list[_Row] = []
    skipped = _Skipped()
    for index, (line, data) in enumerate(_json_lines(source)):
        request_id = str(data.get("request_id", index))
        arrival = _seconds(_get(data, "arrival_time", source, line), source, line, "arrival_time")
        prompt = _count(_get(data, "input_toks", source, line), source, line, "input_toks")
        output = _count(_get(data, "output_toks", source, line), source, line, "output_toks")
        if prompt == 0 or output == 0:
            skipped.count += 1
            continue
        rows.append((arrival, request_id, prompt, output, None))
    skipped.warn(source)
    return rows


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    """`data[key]` as text, None when absent or null."""
    value = data.get(key)
    return None if value is None else str(value)


def _read_jsonl(source: _Source) -> list[_Row]:
    """Our own JSONL: the `Request` fields by name."""
    rows: list[_Row] = []
    skipped = _Skipped()
    for index, (line, data) in enumerate(_json_lines(source)):
        arrival = _seconds(_get(data, "arrival_s", source, line), source, line, "arrival_s")
        prompt = _count(_get(data, "prompt_tokens", source, line), source, line, "prompt_tokens")
        output = _count(_get(data, "output_tokens", source, line), source, line, "output_tokens")
        if prompt == 0 or output == 0:
            skipped.count += 1
            continue
        block = _count(data.get("prefix_block_tokens", MOONCAKE_BLOCK_TOKENS), source, line,
                       "prefix_block_tokens")
        if block == 0:
            raise source.error("expected a positive integer, got 0", line, "prefix_block_tokens")
        priority = data.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise source.error(f"expected an integer, got {shown(priority)}", line, "priority")
        rows.append((arrival, str(data.get("request_id", index)), prompt, output, {
            "prefix_hashes": _hashes(data.get("prefix_hashes", []), source, line, "prefix_hashes"),
            "prefix_block_tokens": block, "session_id": _optional_text(data, "session_id"),
            "slo_class": _optional_text(data, "slo_class"), "priority": priority}))
    skipped.warn(source)
    return rows


_READERS: dict[str, Callable[[_Source], list[_Row]]] = {
    "azure": lambda source: _read_csv(source, "azure"),
    "burstgpt": lambda source: _read_csv(source, "burstgpt"),
    "peer": lambda source: _read_csv(source, "peer"),
    "mooncake": _read_mooncake,
    "vllm": _read_vllm,
    "jsonl": _read_jsonl,
}

#: Format names accepted by `load_trace(fmt=...)`.
FORMATS: tuple[str, ...] = tuple(_READERS)


# ---------------------------------------------------------------------------------------------
# Detection and the public entry points


def _first_line(source: _Source) -> str:
    """The first non-blank line of the trace."""
    for _, text in source.lines():
        if text.strip():
            return text.strip()
    raise source.error("empty trace: no lines")


def _detect(source: _Source) -> str:
    """Format name from the first line: JSON keys for JSONL, column names for CSV."""
    first = _first_line(source)
    if first.startswith("{"):
        data = parse_json(first, source.label, 1)
        if not isinstance(data, dict):
            raise source.error(f"expected a JSON object, got {type(data).__name__}", 1)
        keys = set(data)
        for fmt, key in (("mooncake", "input_length"), ("vllm", "input_toks"), ("jsonl", "prompt_tokens")):
            if key in keys:
                return fmt
        raise source.error(
            f"unknown JSONL trace; keys found: {shown(sorted(keys))}; expected Mooncake "
            "(input_length), vLLM (input_toks) or paretoserve (prompt_tokens) records", 1)
    try:
        columns = {_norm(name) for name in next(csv.reader([first]))}
    except csv.Error as exc:
        raise source.error(f"not valid CSV ({exc})", 1) from None
    for fmt in ("peer", "burstgpt", "azure"):
        if columns & set(_CSV_COLUMNS[fmt]["prompt"]) and columns & set(_CSV_COLUMNS[fmt]["output"]):
            return fmt
    raise source.error(
        f"unknown CSV trace header {shown(first, 120)}; expected Azure (TIMESTAMP,ContextTokens,"
        "GeneratedTokens), BurstGPT (Timestamp,...,Request tokens,Response tokens,...) or peer "
        "(arrived_at,num_prefill_tokens,num_decode_tokens) columns", 1)


def _read(source: _Source, fmt: str) -> list[Request]:
    """Read `source` as `fmt`: requests sorted by arrival, the first at 0 s."""
    if fmt not in _READERS:
        raise UserError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rows = _READERS[fmt](source)
    if not rows:
        raise source.error("the trace has no usable requests")
    rows.sort(key=lambda row: row[0])  # stable: equal times keep file order
    start = rows[0][0]
    return [Request(rid, arrival - start, prompt, output, **extra) if extra
            else Request(rid, arrival - start, prompt, output)
            for arrival, rid, prompt, output, extra in rows]


@functools.cache
def _bundled(name: str) -> tuple[Request, ...]:
    """A bundled trace, read once per process (requests are immutable)."""
    file_name, fmt = BUNDLED[name]
    return tuple(_read(_Source(DATA_DIR / file_name, name), fmt))


def load_trace(name_or_path: str, *, fmt: str | None = None) -> list[Request]:
    """Load a bundled trace (`azure-code`, `azure-conv`, `mooncake-conv`) or a trace file.

    Args:
        name_or_path: a bundled trace name or a path to a trace file (optionally gzip-compressed).
        fmt: one of `FORMATS`; detected from the header / first line when None (ignored for
            bundled names).

    Returns:
        The requests sorted by arrival, the first arriving at 0 s (times in seconds).

    Raises:
        UserError: unknown name, missing file, unknown format, missing column or a bad value
            (the message names the file, line and field).
    """
    if name_or_path in BUNDLED:
        return list(_bundled(name_or_path))
    path = Path(name_or_path)
    if not path.exists():
        raise UserError(f"trace {name_or_path!r}: no such file and not a bundled trace "
                        f"(bundled: {', '.join(BUNDLED)})")
    source = _Source(path, name_or_path)
    return _read(source, fmt or _detect(source))


def save_trace(requests: list[Request], path: str | Path) -> None:
    """Write `requests` as our own JSONL (readable by `load_trace`), atomically."""
    lines = []
    for request in requests:
        data = {
            "request_id": request.request_id, "arrival_s": request.arrival_s,
            "prompt_tokens": request.prompt_tokens, "output_tokens": request.output_tokens,
        }
        if request.prefix_hashes:
            data["prefix_hashes"] = list(request.prefix_hashes)
            data["prefix_block_tokens"] = request.prefix_block_tokens
        for key in ("session_id", "slo_class"):
            if getattr(request, key) is not None:
                data[key] = getattr(request, key)
        if request.priority:
            data["priority"] = request.priority
        lines.append(json.dumps(data, separators=(",", ":")) + "\n")
    write_text_atomic(path, "".join(lines))
