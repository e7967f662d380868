"""Writing an output: to a temporary file beside it, renamed when complete, then its sidecar (`--meta`).

The sidecar is renamed after the output: a sidecar beside an output says that the output is complete (what
`a2p batch` relies on to skip a job that was already done).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from a2pcli.errors import A2PError, OutputError
from a2pcli.outputs import atomic_path
from a2pcli.pipeline.sidecar import job_record, sidecar_path, write_sidecar

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, larger than the filesystem allows
DISK_FULL_TEXT = tuple(os.strerror(e) for e in DISK_FULL)  # the same as ffmpeg reports them


def write_output(output: Path, make: Callable[[Path], dict], command: str, inputs: dict, job) -> dict:
    """`make(tmp)` writes the output to the temporary path `tmp` and returns its summary; then `tmp` becomes
    `output` and, with `job.output.meta`, the sidecar is written beside it. A full disk (or a quota, or a file
    size limit) is an OutputError naming the file that could not be written, whichever step met it."""
    output = Path(output)
    record = job_record(command, inputs, job) if job.output.meta else None  # inputs hashed before they could change
    temporary: list[Path] = []
    with _disk_full_names(output, temporary), atomic_path(output, job.output.overwrite) as tmp:
        temporary.append(tmp)
        summary = make(tmp)
    if record is not None:
        with _disk_full_names(sidecar_path(output)):
            write_sidecar(output, record, summary)
    return summary


@contextlib.contextmanager
def _disk_full_names(path: Path, temporary: list[Path] | None = None) -> Iterator[None]:
    """Errors of writing `path` name it: a full disk met by any step (an OSError, or a stage's error quoting
    ffmpeg's message, e.g. while muxing the audio) and a stage's error naming `path`'s temporary file."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full(path, exc.strerror) from exc
        raise
    except A2PError as exc:
        if temporary and exc.subject == str(temporary[0]):
            exc.subject = str(path)
        reason = next((text for text in DISK_FULL_TEXT if text in exc.message), None)
        if reason is not None and not Path(exc.subject or "").is_dir():  # (a --frames-dir names itself)
            raise disk_full(path, reason) from exc
        raise


def disk_full(path: Path, reason: str) -> OutputError:
    return OutputError(f"writing it failed: {reason[:1].lower()}{reason[1:]}", subject=str(path),
                       remedy="free some space on its disk, or choose another -o")
