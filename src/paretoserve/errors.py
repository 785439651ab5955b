"""Errors a user can act on.

Every failure caused by bad input (a file, a flag, a configuration that cannot work) raises
`UserError` with a one-line message that says what is wrong and what would be accepted. The CLI
prints that line and exits non-zero; it never shows a traceback for a `UserError`. Characters
that would break the line or drive the terminal (a newline in a value quoted from a file) are
shown escaped, as in Python's repr: ``\\n``, ``\\x1b``.
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
        super().__init__(_one_line(where + message))
        self.file = file
        self.line = line
        self.field = field


def _one_line(text: str) -> str:
    """`text` with every non-printable character (newline, carriage return, escape...) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shown(value: object, width: int = 60) -> str:
    """`value`'s repr for a message, cut to `width` characters (a value quoted from a file may be
    a megabyte long)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
