"""Shared fixtures. Media come from ../shared (set A2P_SHARED to move it). Without it, the tests that
check what matters most to a user (the face moves, the mouth opens with speech, the file plays, bad
inputs fail clearly) run on the repository's own examples/ and on media generated from them
(`media(name, fallback=...)`); corpus-scale checks skip with a clear message. Every test gets its own
empty model cache."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MEDIA = SHARED / "media"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("A2P_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_PORTRAIT = EXAMPLES / "astronaut.jpg"  # a photo portrait, 512x512
EXAMPLE_SPEECH = EXAMPLES / "speech.flac"  # a synthesised sentence, 16 kHz mono
EXAMPLE_MOTION = EXAMPLES / "head_motion.npy"  # nod, turn and tilt, AniPortrait's template layout


def media(name: str, fallback=None) -> Path:
    """A file of the shared media; without ../shared, `fallback` (a path, or a function that makes
    one) when given, else the test is skipped."""
    path = MEDIA / name
    if path.exists():
        return path
    if fallback is not None:
        return Path(fallback() if callable(fallback) else fallback)
    pytest.skip(f"shared media {path} not present (set A2P_SHARED to the shared folder)")


@functools.lru_cache(maxsize=1)
def _generated_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="a2p-test-media-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.lru_cache(maxsize=1)
def second_portrait() -> Path:
    """Another portrait for batches: the example mirrored (a different image, the same kind of face)."""
    from PIL import Image, ImageOps

    path = _generated_dir() / "astronaut_mirrored.png"
    ImageOps.mirror(Image.open(EXAMPLE_PORTRAIT).convert("RGB")).save(path)
    return path


@functools.lru_cache(maxsize=1)
def driving_video() -> Path:
    """A talking-head video made from the examples: the portrait following the example head motion
    (nod, turn, tilt; 4 s at 30 fps, 256x256) with the example speech as its audio track."""
    path = _generated_dir() / "astronaut_moving.mp4"
    run_a2p("pose2vid", EXAMPLE_PORTRAIT, EXAMPLE_MOTION, "--audio", EXAMPLE_SPEECH, "--crop", "--size", "256",
            "-o", path, "--quiet", check=0)
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
