"""Reading JSON-lines files with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from paretoserve.errors import UserError


def iter_json_lines(lines: Iterable[str], file: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; bad JSON is a UserError naming
    `file` and the line."""
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield line, json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"not valid JSON ({exc.msg} at column {exc.colno})", file=file, line=line) from None
