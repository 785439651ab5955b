"""Run folders (DESIGN §2): ``config.yaml``, ``requests.jsonl`` and ``summary.json``.

`RunWriter` builds the folder in a hidden temporary sibling (``.NAME.<random>.partial``) and moves it
into place only when it is complete, so a reader never sees half a run. On an exception or Ctrl-C it
either removes the temporary folder (nothing is left behind) or, with ``keep_partial=True``, turns
what was written into a valid run whose ``summary.json`` is computed from the records written so far
and says ``"partial": true``. Where it may write, and what it may replace (an earlier run of the same
command only), is the rule of `paretoserve.outputs`. `read_run` reads a run folder back.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import yaml

from paretoserve.errors import UserError, shown
from paretoserve.jsonlines import iter_json_lines
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import Slo
from paretoserve.metrics.summary import Summary, summarize
from paretoserve.outputs import Inputs, claim_folder, install_folder, temporary_folder
from paretoserve.textfiles import read_json, read_yaml

CONFIG_FILE = "config.yaml"
REQUESTS_FILE = "requests.jsonl"
SUMMARY_FILE = "summary.json"

def _is_count(value: object) -> bool:
    """An integer >= 0 (not a bool)."""
    return type(value) is int and value >= 0


def _is_seconds(value: object) -> bool:
    """A finite number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_gaps(value: object) -> bool:
    """A list of finite numbers >= 0 (token gaps in seconds)."""
    return isinstance(value, list) and all(_is_seconds(gap) and gap >= 0 for gap in value)


#: Fields of a requests.jsonl line: (check, what is expected, required). An optional field given
#: as null takes its default.
_FIELDS: dict[str, tuple[Callable[[object], bool], str, bool]] = {
    "request_id": (lambda value: isinstance(value, str), "a string", True),
    "arrival_s": (_is_seconds, "a finite number of seconds", True),
    "prompt_tokens": (_is_count, "an integer >= 0", True),
    "output_tokens": (_is_count, "an integer >= 0", True),
    "scheduled_s": (_is_seconds, "a finite number of seconds or null", False),
    "first_token_s": (_is_seconds, "a finite number of seconds or null", False),
    "last_token_s": (_is_seconds, "a finite number of seconds or null", False),
    "preemptions": (_is_count, "an integer >= 0", False),
    "replica": (_is_count, "an integer >= 0 or null", False),
    "error": (lambda value: isinstance(value, str), "a string or null", False),
    "itl_s": (_is_gaps, "a list of seconds >= 0 or null", False),
    "cached_prompt_tokens": (_is_count, "an integer >= 0", False),
    "extra": (lambda value: isinstance(value, dict), "a JSON object", False),
}


class RunWriter:
    """Writes one run folder atomically. Use as a context manager.

    Args:
        out_dir: the run folder to create; an earlier run of the same command there is replaced once
            the new one is complete, anything else is refused (`paretoserve.outputs`).
        config: everything needed to repeat the run; written as config.yaml. Its "command" names the
            command writing the run (e.g. "simulate").
        inputs: the paths the run is made from (never written into or over).
        keep_partial: on failure, keep what was written as a partial run instead of removing it.
        flush_every: flush requests.jsonl to the OS every this many records (1 = each record, so an
            interrupted run loses nothing; larger batches are faster).
        slo: the SLO used for the summary of a partial run.
        estimated: marks the summary of a partial run as simulated.

    Leaving the block without calling `finish` finishes with a summary computed from the records
    written (so `finish` is needed only to pass a summary with more than the records hold).
    """

    def __init__(self, out_dir: str | Path, config: dict[str, Any], *, keep_partial: bool,
                 flush_every: int = 1, slo: Slo | None = None, estimated: bool = False,
                 inputs: Inputs = ()) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        if not isinstance(config.get("command"), str):
            raise ValueError("config must name the command writing the run, e.g. {'command': 'simulate'}")
        self.command: str = config["command"]
        self.inputs = tuple(inputs)
        self.out_dir = Path(out_dir)
        self.config = config
        self.keep_partial = keep_partial
        self.flush_every = flush_every
        self.slo = slo
        self.estimated = estimated
        self.records_written = 0
        self._tmp: Path | None = None
        self._handle: TextIO | None = None

    def __enter__(self) -> RunWriter:
        self.out_dir = claim_folder(self.out_dir, self.command, inputs=self.inputs)
        self._tmp = temporary_folder(self.out_dir)
        self._handle = open(self._tmp / REQUESTS_FILE, "w", encoding="utf-8")
        return self

    def add(self, record: RequestRecord) -> None:
        """Append one record as a JSON line."""
        if self._handle is None:
            raise RuntimeError("RunWriter.add() outside its with-block or after finish()")
        self._handle.write(record.to_json() + "\n")
        self.records_written += 1
        if self.records_written % self.flush_every == 0:
            self._handle.flush()

    def open_extra(self, name: str) -> TextIO:
        """Open another text file of the run (e.g. iterations.csv) in the folder being written; it
        moves into place with the rest. The caller closes it before `finish`."""
        if self._tmp is None:
            raise RuntimeError("RunWriter.open_extra() outside its with-block or after finish()")
        return open(self._tmp / name, "w", encoding="utf-8")

    def finish(self, summary: Summary | None = None) -> Path:
        """Write summary.json and config.yaml and move the folder into place; returns its path.

        Without `summary`, the summary is computed from the records written.
        """
        if self._handle is None or self._tmp is None:
            raise RuntimeError("RunWriter.finish() outside its with-block or called twice")
        self._close()
        if summary is None:
            summary = self._summary_from_disk(partial=False)
        self._complete(summary)
        return self.out_dir

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._tmp is None:
            return
        if kind is None:
            self.finish()
            return
        self._close()
        if self.keep_partial:
            try:
                self._complete(self._summary_from_disk(partial=True))
                return
            except Exception:  # the original error matters more; drop what cannot be saved
                pass
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _close(self) -> None:
        """Flush and close requests.jsonl (fsync so the finished run survives a crash)."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def _summary_from_disk(self, *, partial: bool) -> Summary:
        """The summary of the records written so far."""
        assert self._tmp is not None
        records = _read_records(self._tmp / REQUESTS_FILE)
        return summarize(records, self.slo, estimated=self.estimated, partial=partial)

    def _complete(self, summary: Summary) -> None:
        """Write the summary and config, then move the temporary folder to `out_dir`."""
        assert self._tmp is not None
        (self._tmp / SUMMARY_FILE).write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
        (self._tmp / CONFIG_FILE).write_text(
            yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False, allow_unicode=True),
            encoding="utf-8")
        try:
            install_folder(self._tmp, self.out_dir, self.command, inputs=self.inputs)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        finally:
            self._tmp = None


@dataclass
class Run:
    """A run folder read back.

    Attributes:
        path: the folder.
        config: config.yaml ({} when absent).
        records: requests.jsonl, in file order.
        summary: summary.json as a dict (None when absent).
    """

    path: Path
    config: dict[str, Any]
    records: list[RequestRecord]
    summary: dict[str, Any] | None


def _record(data: object, path: Path, line: int) -> RequestRecord:
    """The record of one parsed line of requests.jsonl (see `_FIELDS`), else a UserError."""
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object, got {type(data).__name__}", file=str(path), line=line)
    for key, (check, expected, required) in _FIELDS.items():
        if key not in data or data[key] is None:
            if required:
                raise UserError("missing", file=str(path), line=line, field=key)
            data.pop(key, None)
        elif not check(data[key]):
            raise UserError(f"expected {expected}, got {shown(data[key])}", file=str(path), line=line,
                            field=key)
    return RequestRecord.from_dict(data)


def _read_records(path: Path) -> list[RequestRecord]:
    """Parse requests.jsonl; a malformed line is a UserError naming file and line."""
    return [_record(data, path, line) for line, data in iter_json_lines(path)]


def _read_mapping(path: Path, parse: Callable[[Path], object], kind: str) -> dict[str, Any]:
    """A file holding one mapping (config.yaml, summary.json), {} when it holds nothing."""
    data = parse(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"expected a {kind} mapping, got {type(data).__name__}", file=str(path))
    return data


def read_run(path: str | Path) -> Run:
    """Read a run folder written by `RunWriter` (or imported into the same schema)."""
    folder = Path(path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"run folder {str(folder)!r} {what}")
    requests_path = folder / REQUESTS_FILE
    if not requests_path.is_file():
        raise UserError(f"not a run folder: {REQUESTS_FILE} is missing", file=str(folder))
    config_path, summary_path = folder / CONFIG_FILE, folder / SUMMARY_FILE
    config = _read_mapping(config_path, read_yaml, "YAML") if config_path.exists() else {}
    summary = _read_mapping(summary_path, read_json, "JSON") if summary_path.exists() else None
    return Run(folder, config, _read_records(requests_path), summary)
