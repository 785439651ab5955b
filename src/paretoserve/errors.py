"""Errors a user can act on.

Every failure caused by bad input (a file, a flag, a configuration that cannot work) raises
`UserError` with a one-line message that says what is wrong and what would be accepted. The CLI
prints that line and exits non-zero; it never shows a traceback for a `UserError`.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is shown to the user as is, on one line."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}"
            if line is not None:
                where += f":{line}"
            if field is not None:
                where += f" field '{field}'"
            where += ": "
        elif field is not None:
            where = f"field '{field}': "
        super().__init__(where + message)
        self.file = file
        self.line = line
        self.field = field
