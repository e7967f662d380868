"""Reading images, and streaming video frames through the ffmpeg that imageio-ffmpeg bundles (a2pcli.ffmpeg).

    load_image(path)      -> (H, W, 3) uint8 RGB, EXIF orientation applied, alpha dropped
    probe_video(path)     -> VideoInfo (fps, size, duration, estimated frame count, audio)
    stream_frames(...)    -> iterator of (H, W, 3) uint8 RGB frames; memory stays bounded
Files are recognised by their content, not their name (a `.png` holding JPEG data works).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli import ffmpeg
from a2pcli.errors import InputError

PREFETCH_FRAMES = 8  # decoded frames buffered ahead of the consumer (bounded memory)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    width: int  # frame size as decoded (rotation applied)
    height: int
    duration: float  # seconds, as the container reports it
    has_audio: bool

    @property
    def est_frames(self) -> int:
        return max(1, int(round(self.duration * self.fps)))


def require_file(path: Path, what: str = "input") -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", subject=str(path), remedy=f"check the {what} path")
    if path.is_dir():
        raise InputError("is a directory, expected a file", subject=str(path))
    if path.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", subject=str(path), remedy=f"give a real {what} file")
    return path


def is_image(path: Path) -> bool:
    """True when Pillow recognises the content as a still image (single-frame)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) == 1
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB. EXIF rotation applied; grayscale, palette, 16-bit and RGBA converted
    (transparent areas composited on white)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = require_file(path, "image")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            if im.mode == "I;16" or im.mode == "I":
                arr = np.asarray(im, dtype=np.float32)
                arr = (arr / max(1.0, float(arr.max())) * 255).astype(np.uint8)
                return np.ascontiguousarray(np.stack([arr] * 3, axis=-1))
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"not an image Pillow can read ({exc})", subject=str(path), remedy="use a PNG or JPEG") from exc


def probe_video(path: Path) -> VideoInfo:
    import imageio_ffmpeg

    path = require_file(path, "video")
    try:
        gen = imageio_ffmpeg.read_frames(ffmpeg.file_url(path))
        meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        raise InputError(
            f"not a video ffmpeg can read ({ffmpeg.reason(str(exc))})",
            subject=str(path),
            remedy="check that the file is a complete video (mp4, mov, mkv, webm, avi...)",
        ) from exc
    width, height = meta["size"]
    fps = float(meta.get("fps") or 0.0)
    if fps <= 0:
        raise InputError("video has no frame rate", subject=str(path), remedy="re-encode it with a fixed fps")
    return VideoInfo(
        path=path,
        fps=fps,
        width=int(width),
        height=int(height),
        duration=float(meta.get("duration") or 0.0),
        has_audio=meta.get("audio_codec") is not None,
    )


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def decode_size(info: VideoInfo, max_side: int | None) -> tuple[int, int]:
    """Size frames are decoded at: the video's own, or scaled down so the long side is <= max_side."""
    if not max_side or max(info.width, info.height) <= max_side:
        return info.width, info.height
    k = max_side / max(info.width, info.height)
    return _even(info.width * k), _even(info.height * k)


def stream_frames(
    info: VideoInfo,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield (h, w, 3) uint8 RGB frames decoded by ffmpeg in its own process, prefetched by a thread.

    size: output (w, h) or None for the native size; fps: resample to this rate; start/end: seconds."""
    import logging

    import imageio_ffmpeg

    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)  # it warns when we ask for a scaled size
    input_params, filters = [], []
    if start:
        input_params += ["-ss", f"{start:.6f}"]
    if end is not None:
        input_params += ["-t", f"{max(0.0, end - (start or 0.0)):.6f}"]
    if fps:
        filters.append(f"fps={fps}")
    w, h = size or (info.width, info.height)
    if (w, h) != (info.width, info.height):
        filters.append(f"scale={w}:{h}:flags=area")
    output_params = ["-vf", ",".join(filters)] if filters else []
    gen = imageio_ffmpeg.read_frames(ffmpeg.file_url(info.path), pix_fmt="rgb24", input_params=input_params or None,
                                     output_params=output_params or None)
    try:
        next(gen)  # metadata
    except (OSError, RuntimeError, StopIteration) as exc:
        raise InputError(f"ffmpeg cannot decode it ({ffmpeg.reason(str(exc))})", subject=str(info.path)) from exc
    yield from _prefetch(gen, (h, w, 3), info.path)


def _prefetch(gen, shape: tuple[int, int, int], path: Path) -> Iterator[np.ndarray]:
    """Run the decoding generator in a thread so ffmpeg decodes while the caller computes."""
    q: queue.Queue = queue.Queue(maxsize=PREFETCH_FRAMES)
    stop = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for buf in gen:
                if stop.is_set():
                    break
                q.put(np.frombuffer(buf, np.uint8).reshape(shape))
            q.put(done)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
        finally:
            gen.close()

    t = threading.Thread(target=worker, daemon=True, name="a2p-decode")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise InputError(f"decoding failed ({ffmpeg.reason(str(item))})", subject=str(path)) from item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
