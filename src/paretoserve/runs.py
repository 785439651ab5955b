"""Run folders (DESIGN §2): ``config.yaml``, ``requests.jsonl`` and ``summary.json``.

`RunWriter` builds the folder in a hidden temporary sibling (``.NAME.<random>.partial``) and moves it
into place only when it is complete, so a reader never sees half a run. On an exception or Ctrl-C it
either removes the temporary folder (nothing is left behind) or, with ``keep_partial=True``, turns
what was written into a valid run whose ``summary.json`` is computed from the records written so far
and says ``"partial": true``. Where it may write, and what it may replace (an earlier run of the same
command only), is the rule of `paretoserve.outputs`. `read_run` reads a run folder back.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import yaml

from paretoserve.errors import UserError
from paretoserve.jsonlines import iter_json_lines
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import Slo
from paretoserve.metrics.summary import Summary, summarize
from paretoserve.outputs import Inputs, claim_folder, install_folder, temporary_folder

CONFIG_FILE = "config.yaml"
REQUESTS_FILE = "requests.jsonl"
SUMMARY_FILE = "summary.json"

#: Fields every line of requests.jsonl must have: the JSON types accepted, and their description.
_REQUIRED: dict[str, tuple[tuple[type, ...], str]] = {
    "request_id": ((str,), "a string"), "arrival_s": ((int, float), "a number of seconds"),
    "prompt_tokens": ((int,), "an integer"), "output_tokens": ((int,), "an integer"),
}
_OPTIONAL_NUMBERS = ("scheduled_s", "first_token_s", "last_token_s")


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


def _check_line(data: object, path: Path, line: int) -> dict[str, Any]:
    """The parsed line when it has the record fields with the right types, else a UserError."""
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object, got {type(data).__name__}", file=str(path), line=line)
    for key, (types, expected) in _REQUIRED.items():
        if key not in data:
            raise UserError("missing", file=str(path), line=line, field=key)
        value = data[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise UserError(f"expected {expected}, got {value!r}", file=str(path), line=line, field=key)
    for key in _OPTIONAL_NUMBERS:
        value = data.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise UserError(f"expected a number or null, got {value!r}", file=str(path), line=line, field=key)
    return data


def _read_records(path: Path) -> list[RequestRecord]:
    """Parse requests.jsonl; a malformed line is a UserError naming file and line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line, data in iter_json_lines(handle, str(path)):
            try:
                records.append(RequestRecord.from_dict(_check_line(data, path, line)))
            except TypeError as exc:
                raise UserError(f"not a request record: {exc}", file=str(path), line=line) from None
    return records


def read_run(path: str | Path) -> Run:
    """Read a run folder written by `RunWriter` (or imported into the same schema)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"run folder {str(folder)!r} does not exist")
    requests_path = folder / REQUESTS_FILE
    if not requests_path.is_file():
        raise UserError(f"not a run folder: {REQUESTS_FILE} is missing", file=str(folder))
    config: dict[str, Any] = {}
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"not valid YAML ({str(exc).splitlines()[0]})", file=str(config_path)) from None
        if not isinstance(config, dict):
            raise UserError(f"expected a mapping, got {type(config).__name__}", file=str(config_path))
    summary = None
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"not valid JSON ({exc.msg})", file=str(summary_path), line=exc.lineno) from None
    return Run(folder, config, _read_records(requests_path), summary)
