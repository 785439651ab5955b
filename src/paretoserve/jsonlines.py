"""Reading JSON-lines files with bounded memory and errors that name the file and line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from paretoserve.textfiles import parse_json, text_lines


def iter_json_lines(path: str | os.PathLike[str], file: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSONL file (see
    `paretoserve.textfiles.text_lines` for the limits); bad JSON is a UserError naming `file`
    (default: `path`) and the line."""
    label = str(path) if file is None else file
    for line, text in text_lines(path, label):
        if text.strip():
            yield line, parse_json(text, label, line)
