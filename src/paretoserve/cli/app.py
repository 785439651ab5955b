"""The Typer application and the error boundary shared by every command.

Command modules register themselves on `app` with `@app.command()`; `main()` turns a `UserError`
(bad input) into one red line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from paretoserve.errors import UserError

#: Rich emoji codes are off: `uniform:A:B` must print as typed, not as an emoji for ":A:".
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


class _Group(TyperGroup):
    """Command group that reports a `UserError` as one line and exit code 2."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None


app = typer.Typer(
    cls=_Group,
    name="paretoserve",
    help="Predict, simulate, measure and search LLM serving deployments: latency, throughput, "
    "goodput, cost and energy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: square brackets ("[default: 8]") and colons print as typed
)


def main() -> None:
    """Console-script entry point."""
    from paretoserve.cli import commands  # noqa: F401  (registers the commands)

    try:
        app(prog_name="paretoserve")
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
