"""The ``gradleak`` Typer application, its console and the one-line failure every command reports."""

from __future__ import annotations

import typer
from rich.console import Console

__all__ = ["app", "console", "fail"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="gradleak: how much of FL clients' data can the server reconstruct from their updates?")
console = Console()


def fail(exc: Exception) -> None:
    """Print ``exc`` as one line and exit with code 2 (a user error)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2) from exc
