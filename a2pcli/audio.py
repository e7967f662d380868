"""Reading speech: any file ffmpeg decodes -> mono float samples, and what its audio stream holds.

    probe_audio(path)                      -> AudioTrack, or None when the file has no audio
    load_audio(path, sample_rate=SAMPLE_RATE)  -> (N,) float32 mono in [-1, 1]

Any input ffmpeg decodes works: wav of any rate/depth/channels, mp3, m4a, flac, ogg, or the audio track of
a video. Decoding runs in the bundled ffmpeg (a2pcli.ffmpeg).
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli import ffmpeg
from a2pcli.errors import InputError
from a2pcli.media import require_file

SAMPLE_RATE = 16000  # Hz: the speech every model reads (a2p's features and audio2motion, AniPortrait's wav2vec2)
MIN_SPEECH_S = 0.5  # the shortest speech audio2video animates (the README's minimum; 0.1 s broke audio2motion)
SPEECH_ARRAY_NAME = "<speech array>"  # how speech given as samples is named in messages
DIGITAL_SILENCE_DBFS = -60.0  # a track whose peak stays below this is digital silence
_READ_CHUNK = 1 << 18  # bytes read from ffmpeg's stdout at a time


@dataclass(frozen=True, kw_only=True)
class AudioTrack:
    """The first audio stream of a file, or the part of it from `start_s` lasting `duration_s`.

    Take a part with `dataclasses.replace(track, start_s=..., duration_s=...)`."""

    path: Path
    start_s: float = 0.0  # offset into the file
    duration_s: float  # seconds of audio from start_s (as decoded, not as the container claims)
    sample_rate: int  # of the stream in the file
    channels: int
    has_sound: bool  # False when the part is digital silence (peak below DIGITAL_SILENCE_DBFS)
    peak_dbfs: float | None = None  # loudest sample, -inf for all zeros; None when not measured


_AUDIO_LINE = re.compile(r"^\s*Stream #\d+:\d+\S*: Audio: (?P<codec>[^,]+)(?P<rest>.*)$", re.MULTILINE)
_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "binaural": 2, "quad": 4, "hexagonal": 6, "octagonal": 8,
            "cube": 8, "hexadecagonal": 16}


def _channels(layout: str) -> int:
    layout = layout.strip()
    name = layout.split("(")[0].strip()
    if name in _LAYOUTS:
        return _LAYOUTS[name]
    if m := re.fullmatch(r"(\d+) channels?", name):
        return int(m.group(1))
    if m := re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", name):  # 5.1, 7.1.4, 22.2
        return sum(int(g) for g in m.groups() if g)
    return 2


@dataclass(frozen=True)
class _StreamInfo:
    sample_rate: int | None  # of the first audio stream; None when the file has no audio stream
    channels: int


def _probe_streams(path: Path) -> _StreamInfo:
    """`ffmpeg -i path` and read its stream list; InputError when ffmpeg cannot open the file."""
    proc = ffmpeg.run([ffmpeg.exe(), "-hide_banner", "-nostdin", "-i", ffmpeg.file_url(path)], capture_output=True,
                      text=True, errors="replace")
    if "Input #0" not in proc.stderr:
        raise InputError(
            f"not audio or video ffmpeg can read ({ffmpeg.reason(proc.stderr)})",
            subject=str(path),
            remedy="check that the file is complete audio (wav, mp3, m4a, flac, ogg) or a video with sound",
        )
    m = _AUDIO_LINE.search(proc.stderr)
    if not m:
        return _StreamInfo(None, 0)
    rate = re.search(r",\s*(\d+) Hz", m.group("rest"))
    layout = re.search(r"\d+ Hz,\s*([^,]+)", m.group("rest"))
    return _StreamInfo(int(rate.group(1)) if rate else None, _channels(layout.group(1)) if layout else 2)


def _check_span(start_s: float, duration_s: float | None) -> None:
    if not (math.isfinite(start_s) and start_s >= 0):
        raise InputError(f"audio start must be a time >= 0 s, got {start_s}", subject="audio start")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise InputError(f"audio duration must be > 0 s, got {duration_s}", subject="audio duration")


def _decode_cmd(path: Path, sample_rate: int, fmt: str, start_s: float, duration_s: float | None) -> list[str]:
    """ffmpeg decoding the first audio stream to mono raw samples on stdout. The downmix keeps the
    level of the channels (ffmpeg's default adds them at -3 dB each and can clip float output)."""
    cmd = [ffmpeg.exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
    if start_s:
        cmd += ["-ss", f"{start_s:.6f}"]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    return cmd + ["-i", ffmpeg.file_url(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
                  "-af", "aresample=rematrix_maxval=1.0",
                  "-ac", "1", "-ar", str(sample_rate), "-f", fmt, "pipe:1"]


def _decode_failed(path: Path, stderr: str) -> InputError:
    return InputError(
        f"ffmpeg cannot decode its audio ({ffmpeg.reason(stderr) if stderr.strip() else 'no samples'})",
        subject=str(path),
        remedy="check that the file is complete audio (wav, mp3, m4a, flac, ogg) or a video with sound",
    )


def probe_audio(path: Path) -> AudioTrack | None:
    """The first audio stream of `path`, or None when it has none (a video without sound, an image).

    Decodes the whole stream at SAMPLE_RATE mono, in chunks (bounded memory), to measure its exact
    length and its peak level. InputError when the file is missing or not decodable media."""
    path = require_file(path, "audio")
    info = _probe_streams(path)
    if info.sample_rate is None:
        return None
    cmd = _decode_cmd(path, SAMPLE_RATE, "s16le", 0.0, None)
    err = tempfile.TemporaryFile()  # not a pipe: a chatty ffmpeg must never block on it
    try:
        proc = ffmpeg.start(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    except BaseException:
        err.close()
        raise
    n, peak, tail = 0, 0, b""  # sample count, peak |sample|, odd byte left over between reads
    try:
        while chunk := proc.stdout.read(_READ_CHUNK):
            chunk = tail + chunk
            usable = len(chunk) - len(chunk) % 2
            tail = chunk[usable:]
            samples = np.frombuffer(chunk[:usable], np.int16)
            if samples.size:
                n += samples.size
                peak = max(peak, int(np.abs(samples.astype(np.int32)).max()))
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        err.close()
    if rc != 0 or n == 0:
        raise _decode_failed(path, stderr)
    peak_dbfs = 20 * math.log10(peak / 32768) if peak else -math.inf
    return AudioTrack(
        path=path,
        duration_s=n / SAMPLE_RATE,
        sample_rate=info.sample_rate,
        channels=info.channels,
        has_sound=peak_dbfs >= DIGITAL_SILENCE_DBFS,
        peak_dbfs=peak_dbfs,
    )


def load_audio(
    path: Path, sample_rate: int = SAMPLE_RATE, start_s: float = 0.0, duration_s: float | None = None
) -> np.ndarray:
    """(N,) float32 mono in [-1, 1] at `sample_rate`, from `start_s` for `duration_s` (None: to the end).

    InputError when the file is missing, not decodable, or has no audio stream."""
    path = require_file(path, "audio")
    _check_span(start_s, duration_s)
    if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 384000):
        raise InputError(f"sample rate must be 1000..384000 Hz, got {sample_rate}", subject="sample rate")
    if _probe_streams(path).sample_rate is None:
        raise InputError("has no audio stream", subject=str(path), remedy="give a file with sound (wav, mp3, m4a...)")
    proc = ffmpeg.run(_decode_cmd(path, sample_rate, "f32le", start_s, duration_s), capture_output=True,
                          stdin=subprocess.DEVNULL)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise _decode_failed(path, stderr)
    data = proc.stdout[: len(proc.stdout) - len(proc.stdout) % 4]
    audio = np.frombuffer(data, np.float32)
    if audio.size == 0 and not start_s:
        raise _decode_failed(path, stderr)
    return np.clip(audio, -1.0, 1.0)  # a copy, writable; float sources may exceed full scale


def speech_samples(samples) -> np.ndarray:
    """Speech given as samples (the Python API): (N,) or (N, 1) numbers at SAMPLE_RATE, finite -> (N,) float32
    clipped to [-1, 1]. InputError naming the array otherwise."""
    a = np.asarray(samples)
    if a.dtype.kind not in "iuf" or a.ndim not in (1, 2) or (a.ndim == 2 and 1 not in a.shape):
        raise InputError(f"expected (N,) float32 mono samples at {SAMPLE_RATE} Hz, got {a.dtype} {a.shape}",
                         subject=SPEECH_ARRAY_NAME)
    a = a.reshape(-1).astype(np.float32)
    if not np.isfinite(a).all():
        raise InputError("holds NaN or infinite samples", subject=SPEECH_ARRAY_NAME)
    return np.clip(a, -1.0, 1.0)


def check_speech_length(samples: np.ndarray, name) -> None:
    """InputError naming the speech when it lasts less than MIN_SPEECH_S (a truncated file, a click)."""
    if len(samples) < MIN_SPEECH_S * SAMPLE_RATE:
        held = math.floor(len(samples) / SAMPLE_RATE * 100) / 100
        raise InputError(f"holds {held:.2f} s of audio, less than the {MIN_SPEECH_S:g} s of speech a talking video "
                         "needs", subject=str(name), remedy=f"give a recording of at least {MIN_SPEECH_S:g} s")


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """(N,) float mono in [-1, 1] -> a 16-bit PCM wav file (for speech given as samples: the video's audio track)."""
    import wave

    pcm = (np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return Path(path)
