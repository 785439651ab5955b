"""Measured runs for `calibrate --from` and `validate --measured`: a paretoserve run folder, or a
raw vLLM measurement imported on the fly.

A raw vLLM run folder (`requests.jsonl` in vLLM's per-request schema, with `meta.json`, as in
shared/data/serving_runs) or a vLLM result file (.json / .jsonl) is imported with `import_vllm`
into a temporary folder that is removed afterwards: nothing is written next to the measurement.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rich.markup import escape

from paretoserve.runs import REQUESTS_FILE, Run, read_run

#: Read at most this much of a first line to tell the two record schemas apart.
_PEEK_BYTES = 1 << 16


def _is_paretoserve_records(path: Path) -> bool:
    """True when the first record of `path` is in paretoserve's schema (it has `arrival_s`);
    False for vLLM's per-request schema and for anything that does not parse."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline(_PEEK_BYTES)
    except (OSError, UnicodeDecodeError):
        return True  # read_run reports the problem with its own one-line error
    try:
        data = json.loads(first)
    except json.JSONDecodeError:
        return True
    return not isinstance(data, dict) or "arrival_s" in data


def is_raw_vllm(path: Path) -> bool:
    """True for a vLLM measurement that `import_vllm` reads and `read_run` does not."""
    if path.is_dir():  # vLLM's run folder: requests.jsonl in its schema beside meta.json
        requests = path / REQUESTS_FILE
        return (path / "meta.json").is_file() and requests.is_file() and not _is_paretoserve_records(requests)
    return path.is_file() and path.suffix in (".json", ".jsonl")


def read_measured(path: Path) -> tuple[Run, bool]:
    """The run at `path` and whether it was imported from a raw vLLM measurement.

    The imported run keeps `path` as its path (its name appears in tables and reports) and the
    config that `paretoserve import-vllm` would have written (engine settings from meta.json).
    """
    if not is_raw_vllm(path):
        return read_run(path), False
    from paretoserve.bench.importers import import_vllm

    with tempfile.TemporaryDirectory(prefix="paretoserve-import-") as tmp:
        imported = Path(tmp) / "run"
        import_vllm(path, imported)
        run = read_run(imported)
    run.path = path
    return run, True


def import_note(path: Path) -> str:
    """The line saying a measurement was imported on the fly."""
    return (f"[dim]{escape(str(path))}: a raw vLLM measurement, imported on the fly as import-vllm would "
            "(nothing written there)[/]")
