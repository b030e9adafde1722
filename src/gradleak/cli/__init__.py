"""The ``gradleak`` command line: ``demo``, ``run``, ``report``, ``attack``, ``imprint-calc``, ``simulate``,
``inspect``, ``list``. Errors are one line: what is wrong and what to do (exit code 2).

The commands live in :mod:`~gradleak.cli.records` (``list``, ``simulate``, ``inspect``), :mod:`~gradleak.cli.study`
(``demo``, ``run``, ``report``) and :mod:`~gradleak.cli.attack` (``attack``, ``imprint-calc``), each registered on the
one Typer application of :mod:`~gradleak.cli.app`.
"""

from __future__ import annotations

import typer

from gradleak.cli import attack, records, study
from gradleak.cli.app import app, console

__all__ = ["app", "main"]

_COMMANDS = (attack, records, study)  # importing them registers the commands
_DEBUG = {"on": False}


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected "
                                                                      "error (never shown otherwise)")) -> None:
    """gradleak: how much of FL clients' data can the server reconstruct from their updates?"""
    _DEBUG["on"] = debug


def main() -> None:
    """The console entry: a user error is one line (exit code 2); an unexpected error is one line too (exit code
    1), with its traceback only under ``--debug``."""
    from rich.markup import escape

    try:
        app()
    except Exception as exc:
        if _DEBUG["on"]:
            console.print_exception(show_locals=False)
        else:
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(text)} (unexpected; run again with "
                          "--debug for the traceback)", soft_wrap=True, highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
