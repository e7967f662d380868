"""Atomic output files: write to a unique temp file beside the target, rename at the end.

A failed or interrupted run leaves no partial file and never replaces a good one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from a2pcli.errors import OutputError


def check_output(path: Path, overwrite: bool) -> None:
    """Fail early, before any work, if `path` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError("is a directory, expected a file name", subject=str(path))
    if path.exists() and not overwrite:
        raise OutputError("already exists", subject=str(path), remedy="pass --overwrite to replace it")
    if not parent.is_dir():
        raise OutputError(
            "output directory does not exist", subject=str(parent), remedy="create it first or choose another -o"
        )
    probe = temp_path_for(path)
    try:  # a real write: permission bits alone do not tell (root, read-only mounts, full disks)
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"output directory is not writable ({exc.strerror})", subject=str(parent), remedy="choose another -o"
        ) from exc


def temp_path_for(path: Path) -> Path:
    """A unique hidden name beside `path` that keeps its suffix (ffmpeg picks the format by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.part{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success rename it onto `path`, on any failure delete it."""
    path = Path(path)
    check_output(path, overwrite)
    tmp = temp_path_for(path)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.filename and Path(exc.filename) == tmp:
                raise OutputError(f"writing failed ({exc.strerror})", subject=str(path)) from exc
            raise
        if not tmp.exists():
            raise OutputError("nothing was written", subject=str(path))
        if path.exists() and not overwrite:
            raise OutputError("appeared while this run was writing it", subject=str(path), remedy="pass --overwrite")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
