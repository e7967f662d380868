"""The one place that finds the ffmpeg binary, names files for it, starts it and reads its failures.

    exe()                 -> path of the ffmpeg that imageio-ffmpeg bundles (EnvironmentProblem when missing)
    file_url(path)        -> "file:/absolute/path": what every command line gives ffmpeg for a file
    run(cmd, ...), start(cmd, ...)  -> subprocess.run / Popen, EnvironmentProblem when ffmpeg cannot start
    reason(stderr)        -> the line of ffmpeg's stderr that says what went wrong, in plain words where known

A file is always named as `file:` plus its absolute path: ffmpeg reads any other name as a URL when it
starts with a protocol (`concat:a.wav|b.wav` would be read as two files, `http:...` fetched), and as an
option when it starts with `-`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from a2pcli.errors import EnvironmentProblem

REMEDY = "pip install --force-reinstall imageio-ffmpeg"

# ffmpeg's words -> what they mean for the user
PLAIN = {
    "does not contain any stream": "it has no video stream",
    "moov atom not found": "the file is truncated or still being written (no moov atom)",
    "invalid data found when processing input": "its content is not a known audio/video format",
}
# lines that say what went wrong, most telling first
TELLING = ("no space left", "permission denied", "no such file", "matches no streams", "read-only file system",
           "disk quota", "does not contain", "not divisible by", "unknown encoder", "invalid data", "moov atom")
# lines that only say that something went wrong
GENERIC = re.compile(
    r"conversion failed|error opening output|error parsing options|exiting normally|to ignore this|"
    r"terminating thread|nothing was written|error while filtering|error closing|failed to set value|"
    r"task finished with error|error (?:while|during) (?:en|de)cod|^\[out#|^\s*last message repeated|"
    r"^=== stderr ===|could not load meta information",
    re.IGNORECASE,
)
MAX_REASON_CHARS = 200


def exe() -> str:
    """The bundled ffmpeg binary."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError) as exc:
        raise EnvironmentProblem(f"no ffmpeg binary ({exc})", subject="imageio-ffmpeg", remedy=REMEDY) from exc


def file_url(path: Path | str) -> str:
    """`file:` + the absolute path: ffmpeg reads it as that file whatever its name holds."""
    return "file:" + os.path.abspath(os.fspath(path))


def _started(exc: OSError, cmd: list[str]) -> EnvironmentProblem:
    return EnvironmentProblem(f"ffmpeg does not start ({exc.strerror or exc})", subject=cmd[0], remedy=REMEDY)


def start(cmd: list[str], **kw) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, **kw)
    except OSError as exc:
        raise _started(exc, cmd) from exc


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, **kw)
    except OSError as exc:
        raise _started(exc, cmd) from exc


def reason(stderr: str) -> str:
    """The most telling line of ffmpeg's stderr (or of an error that quotes it), without its `[muxer @ 0x..]`
    prefixes, in plain words where we know them."""
    low = stderr.lower()
    for key, plain in PLAIN.items():
        if key in low:
            return plain
    lines = [re.sub(r"^(?:\[[^\]]*\]\s*)+", "", ln.strip()) for ln in stderr.splitlines() if ln.strip()]
    for key in TELLING:
        for ln in lines:
            if key in ln.lower():
                return ln[:MAX_REASON_CHARS]
    meaningful = [ln for ln in lines if not GENERIC.search(ln)]
    return ((meaningful or lines or ["no message"])[-1])[:MAX_REASON_CHARS]
