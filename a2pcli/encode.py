"""Writing videos and reading audio through the ffmpeg that imageio-ffmpeg bundles.

    VideoWriter(path, (w, h), fps, audio=...)  -> streaming H.264/AAC encoder (context manager)
    probe_audio(path)                            -> AudioTrack, or None when the file has no audio
    load_audio(path, sample_rate=16000)          -> (N,) float32 mono in [-1, 1]

The writer pipes raw RGB frames to ffmpeg from a thread fed by a small bounded queue, so Python
renders the next frames while ffmpeg encodes the previous ones; memory holds a few frames at most.
Any input ffmpeg decodes works for audio: wav of any rate/depth/channels, mp3, m4a, flac, ogg, or
the audio track of a video.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from a2pcli.errors import EnvironmentProblem, InputError, OutputError
from a2pcli.media import _ffmpeg_reason, require_file

QUEUE_FRAMES = 8  # frames buffered between the caller and ffmpeg (fewer for very large frames)
QUEUE_BYTES = 128 << 20  # ... and never more than this many bytes of them
SILENCE_DBFS = -60.0  # a track whose peak stays below this is digital silence
PROBE_RATE = 16000  # rate at which probe_audio decodes to measure the level and the exact length
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Output container by the file's extension: (ffmpeg muxer, audio codec). The video is H.264 in all of
# them; AVI gets 16-bit PCM audio (AAC in AVI is not standard and many players refuse it).
_FORMATS = {".mp4": ("mp4", "aac"), ".m4v": ("mp4", "aac"), ".mov": ("mov", "aac"), ".mkv": ("matroska", "aac"),
            ".avi": ("avi", "pcm_s16le")}
VIDEO_SUFFIXES = tuple(_FORMATS)
_READ_CHUNK = 1 << 18  # bytes read from ffmpeg's stdout at a time
_WAIT_AFTER_FAILURE_S = 5.0


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError) as exc:
        raise EnvironmentProblem(
            f"no ffmpeg binary ({exc})", subject="imageio-ffmpeg", remedy="pip install --force-reinstall imageio-ffmpeg"
        ) from exc


def _popen(cmd: list[str], **kw) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, **kw)
    except OSError as exc:
        raise EnvironmentProblem(
            f"ffmpeg does not start ({exc.strerror or exc})",
            subject=cmd[0],
            remedy="pip install --force-reinstall imageio-ffmpeg",
        ) from exc


# --- audio ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AudioTrack:
    """The first audio stream of a file, or the part of it from `start_s` lasting `duration_s`.

    Take a part with `dataclasses.replace(track, start_s=..., duration_s=...)`."""

    path: Path
    start_s: float = 0.0  # offset into the file
    duration_s: float  # seconds of audio from start_s (as decoded, not as the container claims)
    sample_rate: int  # of the stream in the file
    channels: int
    has_sound: bool  # False when the part is digital silence (peak below SILENCE_DBFS)
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
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True, errors="replace"
    )
    if "Input #0" not in proc.stderr:
        raise InputError(
            f"not audio or video ffmpeg can read ({_ffmpeg_reason(RuntimeError(proc.stderr))})",
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
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
    if start_s:
        cmd += ["-ss", f"{start_s:.6f}"]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    return cmd + ["-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn", "-af", "aresample=rematrix_maxval=1.0",
                  "-ac", "1", "-ar", str(sample_rate), "-f", fmt, "pipe:1"]


def _decode_failed(path: Path, stderr: str) -> InputError:
    return InputError(
        f"ffmpeg cannot decode its audio ({_ffmpeg_reason(RuntimeError(stderr)) if stderr.strip() else 'no samples'})",
        subject=str(path),
        remedy="check that the file is complete audio (wav, mp3, m4a, flac, ogg) or a video with sound",
    )


def probe_audio(path: Path) -> AudioTrack | None:
    """The first audio stream of `path`, or None when it has none (a video without sound, an image).

    Decodes the whole stream at 16 kHz mono, in chunks (bounded memory), to measure its exact
    length and its peak level. InputError when the file is missing or not decodable media."""
    path = require_file(path, "audio")
    info = _probe_streams(path)
    if info.sample_rate is None:
        return None
    cmd = _decode_cmd(path, PROBE_RATE, "s16le", 0.0, None)
    err = tempfile.TemporaryFile()  # not a pipe: a chatty ffmpeg must never block on it
    try:
        proc = _popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
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
        duration_s=n / PROBE_RATE,
        sample_rate=info.sample_rate,
        channels=info.channels,
        has_sound=peak_dbfs >= SILENCE_DBFS,
        peak_dbfs=peak_dbfs,
    )


def load_audio(
    path: Path, sample_rate: int = 16000, start_s: float = 0.0, duration_s: float | None = None
) -> np.ndarray:
    """(N,) float32 mono in [-1, 1] at `sample_rate`, from `start_s` for `duration_s` (None: to the end).

    InputError when the file is missing, not decodable, or has no audio stream."""
    path = require_file(path, "audio")
    _check_span(start_s, duration_s)
    if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 384000):
        raise InputError(f"sample rate must be 1000..384000 Hz, got {sample_rate}", subject="sample rate")
    if _probe_streams(path).sample_rate is None:
        raise InputError("has no audio stream", subject=str(path), remedy="give a file with sound (wav, mp3, m4a...)")
    proc = subprocess.run(_decode_cmd(path, sample_rate, "f32le", start_s, duration_s), capture_output=True,
                          stdin=subprocess.DEVNULL)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise _decode_failed(path, stderr)
    data = proc.stdout[: len(proc.stdout) - len(proc.stdout) % 4]
    audio = np.frombuffer(data, np.float32)
    if audio.size == 0 and not start_s:
        raise _decode_failed(path, stderr)
    return np.clip(audio, -1.0, 1.0)  # a copy, writable; float sources may exceed full scale


# --- video ----------------------------------------------------------------------------------------


def container(path: Path) -> tuple[str, str]:
    """(ffmpeg muxer, audio codec) for a video file name; InputError for an extension a2p does not
    write (it never writes one container under another's name)."""
    from a2pcli.outputs import target_of

    try:
        return _FORMATS[Path(path).suffix.lower()]
    except KeyError:
        target = target_of(Path(path))
        raise InputError(
            f"a2p writes {', '.join(VIDEO_SUFFIXES[:-1])} or {VIDEO_SUFFIXES[-1]} videos, not "
            f"{target.suffix or 'a name without an extension'}",
            subject=str(target),
            remedy=f"name the output {target.with_suffix('.mp4').name}",
        ) from None


_GENERIC = re.compile(
    r"conversion failed|error opening output|error parsing options|exiting normally|to ignore this|"
    r"terminating thread|nothing was written|error while filtering|error closing|failed to set value|"
    r"task finished with error|error (?:while|during) (?:en|de)cod|^\[out#|^\s*last message repeated",
    re.IGNORECASE,
)
_TELLING = ("no space left", "permission denied", "no such file", "matches no streams", "invalid data",
            "read-only file system", "disk quota", "does not contain", "not divisible by", "unknown encoder")


def _stderr_reason(text: str) -> str:
    """The line of ffmpeg's stderr that says what went wrong, without its `[muxer @ 0x..]` prefix."""
    lines = [re.sub(r"^(?:\[[^\]]*\]\s*)+", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
    for key in _TELLING:
        for ln in lines:
            if key in ln.lower():
                return ln[:200]
    meaningful = [ln for ln in lines if not _GENERIC.search(ln)]
    return ((meaningful or lines or ["no message"])[-1])[:200]


class VideoWriter:
    """Stream RGB frames into an H.264 (yuv420p, BT.709) file, with an optional AAC audio track.

        with VideoWriter(tmp, (512, 512), 25, audio=probe_audio(wav)) as w:
            for frame in frames:
                w.write(frame)

    The video length decides: longer audio is cut at the last frame, shorter audio is padded with
    silence. With audio, frames stream into a hidden video-only file beside `path`, and close() adds
    the audio with the exact length of the frames written (one quick ffmpeg pass that copies the
    video: ffmpeg's own -shortest overshoots by up to half a second, nondeterministically).
    `path` is written as given (the caller passes a temp name from outputs.atomic_path); after a
    failure, or an exception in the with-block, ffmpeg is killed and `path` deleted.
    With `frames_dir`, every frame is also saved there as 000000.png, 000001.png... (kept on failure).
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        fps: float,
        crf: int = 18,
        audio: AudioTrack | None = None,
        preset: str = "veryfast",
        frames_dir: Path | None = None,
    ):
        self.path = Path(path)
        self._muxer, self._audio_codec = container(self.path)
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0 or w % 2 or h % 2:
            raise InputError(
                f"video size must be even and positive for yuv420p, got {w}x{h}",
                subject="video size",
                remedy=f"use {max(2, w + w % 2)}x{max(2, h + h % 2)}",
            )
        try:
            fps_f = float(fps)
        except (TypeError, ValueError):
            fps_f = math.nan
        if not (math.isfinite(fps_f) and 0 < fps_f <= 1000):
            raise InputError(f"frame rate must be in (0, 1000], got {fps}", subject="fps")
        try:
            crf_i = int(crf)
        except (TypeError, ValueError):
            crf_i = -1
        if isinstance(crf, bool) or crf_i != crf or not 0 <= crf_i <= 51:
            raise InputError(f"crf must be an integer 0..51, got {crf}", subject="crf", remedy="18 is near lossless")
        if preset not in PRESETS:
            raise InputError(
                f"unknown x264 preset {preset!r}", subject="preset", remedy=f"use one of {', '.join(PRESETS)}"
            )
        if not (self.path.parent if str(self.path.parent) else Path(".")).is_dir():
            raise OutputError("output directory does not exist", subject=str(self.path.parent))
        if audio is not None:
            require_file(audio.path, "audio")
        self.size, self.fps, self.crf, self.preset, self.audio = (w, h), fps_f, crf_i, preset, audio
        self._rate = Fraction(fps_f).limit_denominator(1001)  # 29.97 -> 2997/100, 30000/1001 stays
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        if self.frames_dir is not None:
            import cv2  # noqa: F401  imported here on the caller's thread, so the PNG thread never imports

            try:
                self.frames_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(
                    f"cannot create the frames directory ({exc.strerror})", subject=str(frames_dir)
                ) from exc

        self.frames_written = 0  # frames accepted by write(); all of them are in the file once close() returns
        self._shape = (h, w, 3)
        depth = max(2, min(QUEUE_FRAMES, QUEUE_BYTES // (w * h * 3)))
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._png_q: queue.Queue | None = queue.Queue(maxsize=depth) if self.frames_dir is not None else None
        self._error: BaseException | None = None  # first failure of a worker thread
        self._failure: OutputError | None = None  # what write()/close() raise once failed
        self._state = "open"  # open -> closed | aborted
        self._video_path = self.path  # where the streaming ffmpeg writes
        if audio is not None:
            try:
                fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".video.mp4", dir=self.path.parent)
                os.close(fd)
            except OSError as exc:
                raise OutputError(f"cannot write here ({exc.strerror})", subject=str(self.path.parent)) from exc
            self._video_path = Path(name)
        cmd = self._command()
        self._stderr = tempfile.TemporaryFile()  # not a pipe: a chatty ffmpeg must never block on it
        try:
            self._proc = _popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        except BaseException:
            self._stderr.close()
            self._remove(self._video_path)
            raise
        self._threads = [threading.Thread(target=self._pipe_worker, daemon=True, name="a2p-encode")]
        if self._png_q is not None:
            self._threads.append(threading.Thread(target=self._png_worker, daemon=True, name="a2p-frames"))
        for t in self._threads:
            t.start()

    # -- the ffmpeg command --

    def _command(self) -> list[str]:
        w, h = self.size
        rate = self._rate
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0"]
        cmd += ["-map", "0:v:0",
                "-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                       "format=yuv420p,setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709",
                "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        if self._muxer == "avi":
            cmd += ["-bf", "0"]  # AVI has no presentation timestamps: B-frames would decode as extra frames
        if self._video_path != self.path:
            return cmd + ["-f", "mp4", str(self._video_path)]  # the audio pass makes the final file
        return cmd + self._container_args()

    def _container_args(self) -> list[str]:
        fmt = self._muxer
        return (["-movflags", "+faststart"] if fmt in ("mp4", "mov") else []) + ["-f", fmt, str(self.path)]

    def _mux_audio(self) -> None:
        """Copy the video and add the audio, padded with silence or cut to exactly the video's length."""
        audio = self.audio
        length = f"{float(self.frames_written / self._rate):.6f}"  # exactly the video's
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
               "-i", str(self._video_path)]
        if audio.start_s:
            cmd += ["-ss", f"{audio.start_s:.6f}"]
        if audio.duration_s:
            cmd += ["-t", f"{audio.duration_s:.6f}"]
        cmd += ["-i", str(audio.path), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-af", f"apad=whole_dur={length},atrim=duration={length}", "-c:a", self._audio_codec, *(["-b:a", "128k"] if self._audio_codec == "aac" else []),
                *self._container_args()]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
        except OSError as exc:
            raise EnvironmentProblem(f"ffmpeg does not start ({exc.strerror or exc})", subject=cmd[0]) from exc
        if proc.returncode != 0:
            reason = _stderr_reason(proc.stderr.decode("utf-8", "replace"))
            raise OutputError(f"adding the audio failed ({reason})", subject=str(audio.path))

    # -- worker threads --

    def _pipe_worker(self) -> None:
        stdin = self._proc.stdin
        while (frame := self._q.get()) is not None:
            if self._error is not None:
                continue  # failed: drain so that the caller never blocks
            try:
                stdin.write(frame.data)
                if self._png_q is not None:
                    self._png_q.put(frame)
            except BaseException as exc:  # BrokenPipeError when ffmpeg died; reported to the caller
                self._error = self._error or exc
        if self._png_q is not None:
            self._png_q.put(None)
        if self._error is None:
            try:
                stdin.close()  # EOF: ffmpeg finishes the file
            except BaseException as exc:
                self._error = exc

    def _png_worker(self) -> None:
        import cv2

        index = 0
        while (frame := self._png_q.get()) is not None:
            if self._error is not None:
                continue
            target = self.frames_dir / f"{index:06d}.png"
            index += 1
            try:
                bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                if not cv2.imwrite(str(target), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                    raise OSError(f"cannot write {target}")
            except BaseException as exc:
                self._error = self._error or exc

    def _put(self, item: np.ndarray | None) -> None:
        """Queue an item for the pipe thread, raising as soon as a worker has failed."""
        while True:
            self._raise_if_failed()
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- failure handling --

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._error is None:
            return
        exc = self._error
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)) or self._proc.poll() is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=_WAIT_AFTER_FAILURE_S)
            reason = self._read_reason()
            if reason == "no message" and (self._proc.returncode or 0) < 0:
                reason = f"killed by signal {-self._proc.returncode}"
            self._failure = OutputError(f"ffmpeg failed while encoding ({reason})", subject=str(self.path))
        else:
            self._failure = OutputError(f"writing frames failed ({exc})", subject=str(self.frames_dir or self.path))
        self._failure.__cause__ = exc
        self.abort()
        raise self._failure

    def _read_reason(self) -> str:
        try:
            self._stderr.seek(0)
            return _stderr_reason(self._stderr.read().decode("utf-8", "replace"))
        except (OSError, ValueError):
            return "no message"

    # -- public API --

    def write(self, frame: np.ndarray) -> None:
        """Queue one (H, W, 3) uint8 RGB frame. It is copied, so the caller may reuse its buffer."""
        if self._state != "open":
            raise self._failure or RuntimeError(f"VideoWriter is {self._state}")
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != self._shape:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"expected a {self._shape} uint8 RGB frame, got {got}")
        self._put(np.array(frame, copy=True, order="C"))
        self.frames_written += 1

    def write_batch(self, frames: np.ndarray) -> None:
        """Queue a (B, H, W, 3) uint8 RGB batch, frame by frame (memory stays bounded)."""
        if not isinstance(frames, np.ndarray) or frames.ndim != 4:
            got = f"shape {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {got}")
        for frame in frames:
            self.write(frame)

    def close(self) -> None:
        """Flush the queue, let ffmpeg finish the file and check that it succeeded (OutputError if not)."""
        if self._state == "closed":
            return
        if self._state == "aborted":
            raise self._failure or RuntimeError("VideoWriter is aborted")
        try:
            self._put(None)
            for t in self._threads:
                t.join()
            self._raise_if_failed()
            rc = self._proc.wait()
            if rc != 0:
                self._failure = OutputError(f"ffmpeg failed (exit {rc}: {self._read_reason()})", subject=str(self.path))
            elif self.frames_written == 0:
                self._failure = OutputError("no frames were written", subject=str(self.path))
            if self._failure is not None:
                self.abort()
                raise self._failure
            if self._video_path != self.path:
                self._mux_audio()
        except BaseException as exc:
            if self._failure is None and isinstance(exc, OutputError):
                self._failure = exc
            self.abort()
            raise
        finally:
            if self._video_path != self.path:
                self._remove(self._video_path)
        self._state = "closed"
        self._stderr.close()

    def abort(self) -> None:
        """Kill ffmpeg, stop the threads and delete the partial file. Never raises; safe to repeat."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._error = self._error or RuntimeError("aborted")
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        # with the error set, the threads only drain their queues until they meet None
        pipe_thread = self._threads[0]
        while pipe_thread.is_alive():
            try:
                self._q.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        for t in self._threads:
            t.join(timeout=_WAIT_AFTER_FAILURE_S)
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.close()
        self._remove(self.path)
        self._remove(self._video_path)
        with contextlib.suppress(OSError):
            self._stderr.close()

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
