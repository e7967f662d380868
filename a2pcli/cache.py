"""The shared model cache: where it is, and how files get into it safely.

Layout (documented in the README):
    <cache>/models/<name>/<file>        files of fetched models
    <cache>/models/<name>/.verified     sha256 stamps: "<sha256> <size> <mtime_ns> <file>" per line
    <cache>/locks/<name>.lock           one lock per model, held while writing it

`<cache>` is `$A2P_CACHE_DIR`, else platformdirs' user cache dir for "a2p", resolved on every call
so that tests and scripts can point it elsewhere at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from a2pcli.outputs import temp_path_for

CACHE_ENV = "A2P_CACHE_DIR"
APP_NAME = "a2p"
HASH_CHUNK = 1 << 20  # bytes read per hashing step
LOCK_TIMEOUT_S = 600  # how long a writer waits for another process's download of the same model


def cache_dir() -> Path:
    """The cache root, resolved now (not at import)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def model_cache_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def lock_path(name: str) -> Path:
    return cache_dir() / "locks" / f"{name}.lock"


@contextlib.contextmanager
def model_lock(name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock for writing model `name`; other processes wait, then re-check."""
    from filelock import FileLock

    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def install_file(src: Path, dest: Path, expected_sha256: str | None = None) -> Path:
    """Copy `src` to `dest` atomically (unique temp file, hash check, rename). Caller holds the lock."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        shutil.copyfile(src, tmp)
        if expected_sha256 is not None:
            got = sha256_file(tmp)
            if got != expected_sha256:
                from a2pcli.errors import ModelError

                raise ModelError(
                    f"sha256 {got[:12]}... does not match the expected {expected_sha256[:12]}...",
                    subject=str(src),
                    remedy="get an intact copy of the file",
                )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
