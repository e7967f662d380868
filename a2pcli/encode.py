"""Writing videos through the ffmpeg that imageio-ffmpeg bundles (a2pcli.ffmpeg).

    VideoWriter(path, (w, h), fps, audio=...)  -> streaming H.264/AAC encoder (context manager)

The writer pipes raw RGB frames to ffmpeg from a thread fed by a small bounded queue, so Python
renders the next frames while ffmpeg encodes the previous ones; memory holds a few frames at most.
The audio track comes from a2pcli.audio (`probe_audio`).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import secrets
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from a2pcli import ffmpeg
from a2pcli.audio import AudioTrack
from a2pcli.errors import InputError, OutputError
from a2pcli.media import require_file

QUEUE_FRAMES = 8  # frames buffered between the caller and ffmpeg (fewer for very large frames)
QUEUE_BYTES = 128 << 20  # ... and never more than this many bytes of them
MAX_CRF = 51  # x264's worst quality (0: lossless, 18: looks lossless)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Output container by the file's extension: (ffmpeg muxer, audio codec). The video is H.264 in all of
# them; AVI gets 16-bit PCM audio (AAC in AVI is not standard and many players refuse it).
_FORMATS = {".mp4": ("mp4", "aac"), ".m4v": ("mp4", "aac"), ".mov": ("mov", "aac"), ".mkv": ("matroska", "aac"),
            ".avi": ("avi", "pcm_s16le")}
VIDEO_SUFFIXES = tuple(_FORMATS)
_WAIT_AFTER_FAILURE_S = 5.0



FRAME_NAME = re.compile(r"^\d{6}\.png$")  # the names --frames-dir files get: 000000.png, 000001.png...


def frame_name(index: int) -> str:
    return f"{index:06d}.png"


def write_new_file(target: Path, data: bytes) -> None:
    """Write `data` to a new hidden file beside `target` (created exclusively, links not followed) and rename
    it onto `target`: whatever `target` was (a file, a link to one elsewhere) is replaced, never written through."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
    With `frames_dir`, every frame is also saved there as 000000.png, 000001.png... (kept on failure), each
    written to a new hidden file and renamed onto its name: a link planted in the folder is replaced, never
    followed.
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
        if isinstance(crf, bool) or crf_i != crf or not 0 <= crf_i <= MAX_CRF:
            raise InputError(f"crf must be an integer 0..{MAX_CRF}, got {crf}", subject="crf",
                             remedy="18 is near lossless")
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
            self._proc = ffmpeg.start(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
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
        cmd = [ffmpeg.exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0"]
        cmd += ["-map", "0:v:0",
                "-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                       "format=yuv420p,setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709",
                "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        if self._muxer == "avi":
            cmd += ["-bf", "0"]  # AVI has no presentation timestamps: B-frames would decode as extra frames
        if self._video_path != self.path:
            return cmd + ["-f", "mp4", ffmpeg.file_url(self._video_path)]  # the audio pass makes the final file
        return cmd + self._container_args()

    def _container_args(self) -> list[str]:
        fmt = self._muxer
        return (["-movflags", "+faststart"] if fmt in ("mp4", "mov") else []) + ["-f", fmt, ffmpeg.file_url(self.path)]

    def _mux_audio(self) -> None:
        """Copy the video and add the audio, padded with silence or cut to exactly the video's length."""
        audio = self.audio
        length = f"{float(self.frames_written / self._rate):.6f}"  # exactly the video's
        cmd = [ffmpeg.exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
               "-i", ffmpeg.file_url(self._video_path)]
        if audio.start_s:
            cmd += ["-ss", f"{audio.start_s:.6f}"]
        if audio.duration_s:
            cmd += ["-t", f"{audio.duration_s:.6f}"]
        cmd += ["-i", ffmpeg.file_url(audio.path), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-af", f"apad=whole_dur={length},atrim=duration={length}", "-c:a", self._audio_codec,
                *(["-b:a", "128k"] if self._audio_codec == "aac" else []),
                *self._container_args()]
        proc = ffmpeg.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
        if proc.returncode != 0:
            reason = ffmpeg.reason(proc.stderr.decode("utf-8", "replace"))
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
            target = self.frames_dir / frame_name(index)
            index += 1
            try:
                ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
                if not ok:
                    raise OSError(f"cannot encode {target.name}")
                write_new_file(target, png.tobytes())
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
            return ffmpeg.reason(self._stderr.read().decode("utf-8", "replace"))
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
