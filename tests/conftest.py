"""Shared fixtures. Media come from ../shared (set A2P_SHARED to move it); tests that need it
skip with a clear message when it is absent. Every test gets its own empty model cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MEDIA = SHARED / "media"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("A2P_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def media(name: str) -> Path:
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"shared media {path} not present (set A2P_SHARED to the shared folder)")
    return path


def run_a2p(*args, cwd=None, check=None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh interpreter."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("A2P_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "a2pcli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def run_json(*args, **kw) -> dict:
    proc = run_a2p(*args, "--json", check=0, **kw)
    return json.loads(proc.stdout)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
