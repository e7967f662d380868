"""Option aliases shared by every command, so that `--device` means one thing everywhere."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli import limits


def span(r: limits.Range) -> str:
    """A number's accepted range as help text: "1 to 120"."""
    return f"{limits.shown(r.low)} to {limits.shown(r.high)}"


class ProgressMode(str, Enum):
    auto = "auto"  # rich bars on a TTY, nothing otherwise
    rich = "rich"
    json = "json"  # one JSON object per line on stderr
    none = "none"


Device = Annotated[
    str,
    typer.Option("--device", help="auto | cpu | cuda | cuda:N. auto picks a usable GPU, else the CPU, and says which."),
]
Progress = Annotated[
    ProgressMode,
    typer.Option("--progress", help="Progress display on stderr: auto (bars on a terminal), rich, json (lines), none."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace output files that already exist.")]
OutputPath = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Output file, or a directory (it must exist) for several inputs."),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice (head motion, blinks, noise), "
                                  f"{span(limits.SEED)}.")]
Model = Annotated[
    Optional[str], typer.Option("--model", help="A registry name (see `a2p models list`) or a local path.")
]
