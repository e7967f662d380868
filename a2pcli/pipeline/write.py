"""Writing an output: to a temporary file beside it, renamed when complete, then its sidecar (`--meta`).

The sidecar is renamed after the output: a sidecar beside an output says that the output is complete (what
`a2p batch` relies on to skip a job that was already done).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from a2pcli.outputs import atomic_path
from a2pcli.pipeline.sidecar import job_record, write_sidecar


def write_output(output: Path, make: Callable[[Path], dict], command: str, inputs: dict, job) -> dict:
    """`make(tmp)` writes the output to the temporary path `tmp` and returns its summary; then `tmp` becomes
    `output` and, with `job.output.meta`, the sidecar is written beside it."""
    record = job_record(command, inputs, job) if job.output.meta else None  # inputs hashed before they could change
    with atomic_path(output, job.output.overwrite) as tmp:
        summary = make(tmp)
    if record is not None:
        write_sidecar(output, record, summary)
    return summary

