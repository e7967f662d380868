"""`a2p doctor`: run the environment checks, show them as a table (or one JSON object), exit 1 on a fail."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli.cli.options import JsonOut

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}
OutputDir = Annotated[
    Optional[Path],
    typer.Option("--output-dir", help="Where outputs will be written, for the free-disk check (default: here)."),
]


def _print_table(checks: list, report: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="a2p doctor", show_lines=False)
    for column in ("check", "status", "summary", "remedy"):
        table.add_column(column, overflow="fold")
    for c in checks:
        style = STATUS_STYLE.get(c.status, "")
        table.add_row(c.name, f"[{style}]{c.status}[/{style}]", c.summary, c.remedy, style=None)
    console.print(table)
    console.print("\nPaste this into bug reports:", style="bold")
    console.print(report, markup=False, highlight=False, soft_wrap=True)


def _spinner(json_out: bool):
    """A "checking..." line on stderr while the checks run, on a terminal only."""
    if json_out or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status("checking the environment...")


def doctor(json_out: JsonOut = False, output_dir: OutputDir = None) -> None:
    """Check Python, torch and the GPU, cuDNN, RAM, disk, ffmpeg, mediapipe, OpenCV and the models."""
    from a2pcli import doctor as lib
    from a2pcli.errors import InputError

    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise InputError("is a file, expected the folder outputs will be written to", subject=str(output_dir),
                         remedy="give a folder (it need not exist yet)")
    with contextlib.redirect_stdout(sys.stderr), _spinner(json_out):  # stray prints stay off stdout
        checks = lib.run_checks(output_dir)
    summary = lib.summarize(checks)
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        sys.stdout.flush()
    else:
        _print_table(checks, lib.bug_report(checks))
    raise typer.Exit(0 if summary["ok"] else 1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
