"""Reading a user's text files with bounded memory and one-line errors.

Every input file paretoserve reads (traces, run folders, model configs, hardware and profile YAML,
search spaces) goes through one of two functions here, so that every reader fails the same way:

- `text_lines(path, label)` yields the lines of a line-based file (JSONL, CSV; read through gzip
  when the name ends in ``.gz``). No line is read whole into memory when it is longer than
  `MAX_LINE_BYTES`: the reader stops after that many bytes and reports the file and line.
- `read_text(path, label)` returns a whole small file (a config, a YAML file), refusing one larger
  than `MAX_FILE_BYTES` before reading it; `read_json` and `read_yaml` parse such a file, and
  `parse_json` one JSON text (a line of a JSONL file).

Both decode UTF-8 (a leading byte-order mark is dropped) and raise `UserError` naming the file (and
the line) for a missing file, a folder, a file that cannot be read, a NUL byte or bytes that are not
UTF-8 (a binary file), or a corrupt gzip stream.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from paretoserve.errors import UserError

#: Longest line accepted in a line-based file, in bytes (the longest line of the bundled traces and
#: of a run's requests.jsonl is a few kilobytes: a request with thousands of prefix hashes).
MAX_LINE_BYTES = 1 << 20

#: Largest whole file `read_text` accepts, in bytes (config.json files are kilobytes).
MAX_FILE_BYTES = 64 << 20

_BOM = "\ufeff"

#: `yaml.safe_load`'s loader, in its C implementation (libyaml) when PyYAML has it.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _open(path: Path, label: str) -> BinaryIO:
    """`path` opened for binary reading (through gzip for `.gz`), or a UserError naming `label`."""
    try:
        if path.is_dir():
            raise UserError("is a folder; expected a file", file=label)
        handle: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by the caller)
    except OSError as exc:
        raise UserError(f"cannot read ({exc.strerror or exc.__class__.__name__})", file=label) from None
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


def _decode(raw: bytes, label: str, line: int | None) -> str:
    """`raw` as UTF-8 text; a NUL byte or undecodable bytes mean a binary file."""
    if b"\0" in raw:
        raise UserError("binary data (a NUL byte); expected a UTF-8 text file", file=label, line=line)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text (byte {exc.start + 1} of the line cannot be decoded); expected "
                        "a UTF-8 text file", file=label, line=line) from None


def _read_error(exc: Exception, label: str, line: int | None) -> UserError:
    """A read failure (I/O error, corrupt or truncated gzip stream) as a UserError."""
    what = "a corrupt or truncated gzip file" if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile) \
        else (getattr(exc, "strerror", None) or exc.__class__.__name__)
    return UserError(f"cannot read ({what})", file=label, line=line)


def text_lines(path: str | os.PathLike[str], label: str | None = None, *,
               max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number from 1, text with its line ending) of every line of a text file.

    Args:
        path: the file (gzip-compressed when its name ends in ``.gz``).
        label: how messages name the file (default: `path`).
        max_line_bytes: longest line accepted, in bytes; at most this many bytes (plus one) of a
            line are held in memory.

    Raises:
        UserError: the file cannot be opened or read, is binary, is not UTF-8, or has a longer line.
    """
    source = Path(path)
    name = str(source) if label is None else label
    with _open(source, name) as handle:
        line = 0
        while True:
            try:
                raw = handle.readline(max_line_bytes + 1)
            except (OSError, EOFError, zlib.error) as exc:
                raise _read_error(exc, name, line + 1) from None
            if not raw:
                return
            line += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise UserError(f"line longer than {max_line_bytes:,} bytes; expected one record per "
                                "line (is this the right file?)", file=name, line=line)
            text = _decode(raw, name, line)
            yield line, text.removeprefix(_BOM) if line == 1 else text


def read_text(path: str | os.PathLike[str], label: str | None = None, *,
              max_bytes: int = MAX_FILE_BYTES) -> str:
    """The whole text of a small file (UTF-8, a leading byte-order mark dropped).

    Raises:
        UserError: the file is missing, a folder, unreadable, larger than `max_bytes`, binary or
            not UTF-8 (the message names `label`, default `path`).
    """
    source = Path(path)
    name = str(source) if label is None else label
    with _open(source, name) as handle:
        if source.suffix != ".gz" and os.fstat(handle.fileno()).st_size > max_bytes:
            raise UserError(f"larger than {max_bytes:,} bytes; expected a small text file", file=name)
        try:
            raw = handle.read(max_bytes + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise _read_error(exc, name, None) from None
    if len(raw) > max_bytes:
        raise UserError(f"larger than {max_bytes:,} bytes; expected a small text file", file=name)
    return _decode(raw, name, None).removeprefix(_BOM)


def _first_line_of(exc: BaseException) -> str:
    """The first line of an exception's message, cut to a readable length."""
    text = (str(exc).splitlines() or [exc.__class__.__name__])[0]
    return text if len(text) <= 80 else text[:77] + "..."


def parse_json(text: str, file: str, line: int | None = None) -> Any:
    """`text` parsed as JSON; bad JSON (or nesting too deep to parse) is a UserError naming `file`
    and `line` (default: the line of the error within `text`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg} at column {exc.colno})", file=file,
                        line=exc.lineno if line is None else line) from None
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits, deep nesting
        raise UserError(f"not valid JSON here ({_first_line_of(exc)})", file=file, line=line) from None


def read_json(path: str | os.PathLike[str], label: str | None = None) -> Any:
    """The parsed content of a small JSON file (see `read_text` and `parse_json`)."""
    name = str(path) if label is None else label
    return parse_json(read_text(path, name), name)


def read_yaml(path: str | os.PathLike[str], label: str | None = None) -> Any:
    """The parsed content of a small YAML file (as `yaml.safe_load`; see `read_text`); a parse error is
    a UserError naming the file and, where YAML knows it, the line."""
    name = str(path) if label is None else label
    text = read_text(path, name)
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or _first_line_of(exc)
        raise UserError(f"not valid YAML ({problem})", file=name,
                        line=None if mark is None else mark.line + 1) from None
    except (ValueError, RecursionError) as exc:  # e.g. a date 2024-13-01, nesting too deep
        raise UserError(f"not valid YAML ({_first_line_of(exc)})", file=name) from None
