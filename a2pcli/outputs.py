"""Atomic output files: write to a unique temp file beside the target, rename at the end.

A failed or interrupted run leaves no partial file and never replaces a good one. A run that was
killed (SIGKILL, a power cut) cannot clean up after itself: the next run that writes into the same
folder removes the temporaries of dead processes (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from a2pcli.errors import OutputError

# The names temp_path_for makes (`.<stem>.<pid>.<8 hex>.part<suffix>`) and the video-only side file
# the encoder makes beside such a name (tempfile.mkstemp: `.` + that name's stem + `.` + 8 random
# characters + `.video.mp4`). Nothing else is ever removed as stale.
_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{8}\.part(?:\.[^.]+)?")
_SIDE_NAME = re.compile(r"\.\.(?P<stem>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{8}\.part\.[a-z0-9_]{8}\.video\.mp4")
_swept: set[Path] = set()  # folders already swept by this process


def temp_owner(name: str) -> int | None:
    """The pid in an a2p temporary file name, or None when `name` is not one."""
    m = _TEMP_NAME.fullmatch(name) or _SIDE_NAME.fullmatch(name)
    return int(m.group("pid")) if m else None


def target_of(path: Path) -> Path:
    """The output a temporary name of `temp_path_for` stands for (any other path: itself), so that
    errors found while writing the temporary name the file the user asked for."""
    path = Path(path)
    m = _TEMP_NAME.fullmatch(path.name)
    if m is None:
        return path
    return path.with_name(m.group("stem") + path.name[m.end("stem"):].split(".part", 1)[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or an answer we cannot read: keep its files
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that a2p runs which no longer exist (killed, crashed) left in `folder`:
    regular files named by a2p's own pattern (see `temp_owner`) whose pid is not a running process.
    Files of running processes, other names, links and folders are never touched. Returns the
    removed paths; errors (a read-only folder, a race with another run) are ignored."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        pid = temp_owner(entry.name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _sweep_once(folder: Path) -> None:
    key = folder.resolve() if folder.exists() else folder
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(folder)


def check_output(path: Path, overwrite: bool) -> None:
    """Fail early, before any work, if `path` cannot be written. Also removes stale temporaries of
    dead a2p processes from its folder (once per folder and process)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError("is a directory, expected a file name", subject=str(path))
    if path.exists() and not overwrite:
        raise OutputError("already exists", subject=str(path), remedy="pass --overwrite to replace it")
    if not parent.is_dir():
        raise OutputError(
            "output directory does not exist", subject=str(parent), remedy="create it first or choose another -o"
        )
    _sweep_once(parent)
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
