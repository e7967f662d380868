"""Stage: video or image -> `Motion` (landmarks, head pose, expression per frame).

    extract_motion(path, opts, reporter) -> (Motion, dict summary)

Frames stream from ffmpeg through MediaPipe one at a time, so memory holds only the landmarks
(about 6 kB a frame), whatever the video's length and resolution.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from a2pcli import __version__, limits
from a2pcli.cache import sha256_file
from a2pcli.errors import InputError, NoFaceError
from a2pcli.headpose import FaceReference, canonical, euler_from_matrix, fit_pose, load_reference
from a2pcli.landmarks import NO_FACE_HINT, FaceMeshDetector, detect_image, face_size
from a2pcli.media import VideoInfo, decode_size, is_image, load_image, probe_video, require_file, stream_frames
from a2pcli.motion import Motion
from a2pcli.progress import Reporter

IMAGE_FPS = 25.0  # fps recorded for a single image (a one-frame motion)


@dataclass(frozen=True)
class ExtractOptions:
    smooth: float = 0.0  # temporal Gaussian sigma in frames (0: off)
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    fps: float | None = None  # resample to this rate (None: the video's own)
    max_gap_s: float = 0.5  # face-less gaps up to this long are interpolated; longer ones are held
    min_face_fraction: float = 0.1  # fewer frames with a face than this is an error
    detect_max_side: int = 1280  # frames larger than this are scaled down for detection only


def extract_motion(path: Path, opts: ExtractOptions = ExtractOptions(), reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    path = require_file(Path(path), "video or image")
    check_options(opts)
    ref = load_reference()
    if is_image(path):
        lm_list, fps, size, n_multi = _image_landmarks(path, opts, reporter)
    else:
        lm_list, fps, size, n_multi = _video_landmarks(probe_video(path), opts, reporter)
    motion, counts = assemble(lm_list, fps, size, ref, opts, path)
    counts["multi_face_frames"] = n_multi
    if n_multi:
        reporter.warn(f"{path.name}: {n_multi} frame(s) show more than one face; followed the largest consistent one")
    motion.meta = _meta(path, opts, counts)
    return motion, _summary(path, motion, counts, time.perf_counter() - t0)


def check_options(opts: ExtractOptions) -> None:
    """The options' values (a2pcli.limits), before any work: InputError naming the flag."""
    limits.FPS.check("--fps", opts.fps, optional=True)
    limits.TIME_S.check("--start", opts.start, optional=True)
    limits.TIME_S.check("--end", opts.end, optional=True)
    if opts.end is not None and opts.end <= (opts.start or 0.0):
        raise InputError(f"must be after --start ({limits.shown(opts.start or 0.0)} s), got {limits.shown(opts.end)}",
                         subject="--end")
    limits.SMOOTH.check("--smooth", opts.smooth)
    limits.MAX_GAP_S.check("--max-gap", opts.max_gap_s)
    limits.Range(0, 1).check("min_face_fraction", opts.min_face_fraction)
    limits.Range(64, 16384, whole=True, unit="pixels").check("detect_max_side", opts.detect_max_side)


def _image_landmarks(path: Path, opts: ExtractOptions, reporter: Reporter):
    reporter.stage(f"landmarks {path.name}", 1)
    image = load_image(path)
    faces = detect_image(image)
    reporter.advance()
    if not faces:
        raise NoFaceError("no face found in the image", subject=str(path), remedy=NO_FACE_HINT)
    h, w = image.shape[:2]
    return [faces[0]], opts.fps or IMAGE_FPS, (w, h), int(len(faces) > 1)


def _video_landmarks(info: VideoInfo, opts: ExtractOptions, reporter: Reporter):
    fps = opts.fps or info.fps
    span = (opts.end or info.duration) - (opts.start or 0.0)
    reporter.stage(f"landmarks {info.path.name}", max(1, int(round(span * fps))))
    dw, dh = decode_size(info, opts.detect_max_side)
    back = np.array([info.width / dw, info.height / dh, info.width / dw], np.float32)
    lm_list: list[np.ndarray | None] = []
    tracker = FaceTracker()
    with FaceMeshDetector(video=True) as det:
        tracking = False
        for frame in stream_frames(info, size=(dw, dh), fps=opts.fps, start=opts.start, end=opts.end):
            faces = det.detect(frame)
            if faces and not tracking:
                # A face just acquired by detection is placed differently from the tracked ones that follow
                # (a few % in scale): a second pass over the same frame gives the tracked landmarks.
                faces = det.detect(frame) or faces
            tracking = bool(faces)
            lm = tracker.choose(faces)
            lm_list.append(None if lm is None else lm * back)
            reporter.advance()
    if reporter.total != len(lm_list):
        reporter.set_total(len(lm_list))
    if not lm_list:
        raise InputError("the video has no frames to read", subject=str(info.path), remedy="check --start/--end")
    return lm_list, fps, (info.width, info.height), tracker.multi


class FaceTracker:
    """Follows one face: the largest at first, then the one nearest to where it was."""

    def __init__(self):
        self.last: np.ndarray | None = None
        self.multi = 0

    def choose(self, faces: list[np.ndarray]) -> np.ndarray | None:
        if not faces:
            return None
        if len(faces) > 1:
            self.multi += 1
        if self.last is None:
            pick = max(faces, key=face_size)
        else:
            c = self.last[:, :2].mean(0)
            pick = min(faces, key=lambda f: np.linalg.norm(f[:, :2].mean(0) - c))
        self.last = pick
        return pick


def fill_gaps(lm_list: list[np.ndarray | None], max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> landmarks (T, 478, 3), valid (T,), filled (T,). Gaps up to `max_gap` frames between two
    detections are interpolated linearly; longer gaps and the ends hold the nearest detection."""
    valid = np.array([lm is not None for lm in lm_list])
    idx = np.flatnonzero(valid)
    lm = np.empty((len(lm_list),) + lm_list[idx[0]].shape, np.float32)
    lm[idx] = np.stack([lm_list[i] for i in idx])
    for t in np.flatnonzero(~valid):
        after = idx[np.searchsorted(idx, t)] if t < idx[-1] else None
        before = idx[np.searchsorted(idx, t) - 1] if t > idx[0] else None
        if before is not None and after is not None and after - before - 1 <= max_gap:
            a = (t - before) / (after - before)
            lm[t] = (1 - a) * lm[before] + a * lm[after]
        else:
            near = before if after is None or (before is not None and t - before <= after - t) else after
            lm[t] = lm[near]
    return lm, valid, ~valid


def smooth_landmarks(lm: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian filter along time with edge padding. lm: (T, N, 3)."""
    if sigma <= 0 or len(lm) < 3:
        return lm
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.repeat(lm[:1], radius, 0), lm, np.repeat(lm[-1:], radius, 0)])
    out = np.zeros_like(lm)
    for i, w in enumerate(k):
        out += w * padded[i : i + len(lm)]
    return out


def assemble(lm_list, fps: float, size, ref: FaceReference, opts: ExtractOptions, path: Path):
    """Per-frame detections -> Motion (gaps filled, smoothed, pose fitted) and frame counts."""
    n_valid = sum(lm is not None for lm in lm_list)
    if n_valid == 0:
        raise NoFaceError(f"no face found in any of {len(lm_list)} frames", subject=str(path), remedy=NO_FACE_HINT)
    if n_valid < opts.min_face_fraction * len(lm_list):
        raise NoFaceError(
            f"a face was found in only {n_valid} of {len(lm_list)} frames",
            subject=str(path),
            remedy="use a video where the face is visible most of the time, or cut it with --start/--end",
        )
    lm, valid, filled = fill_gaps(lm_list, max(0, int(round(opts.max_gap_s * fps))))
    lm = smooth_landmarks(lm, opts.smooth)
    r, t, s = fit_pose(lm, ref)
    expression = canonical(lm, r, t, s) - ref.mean
    motion = Motion(fps=float(fps), rotation=r, translation=t, scale=s, valid=valid, filled=filled,
                    frame_size=tuple(int(v) for v in size), landmarks=lm.astype(np.float32),
                    expression=expression.astype(np.float32), reference=ref.mean)
    missing = ~valid
    counts = {"frames": len(lm_list), "face_frames": n_valid, "no_face_frames": int(missing.sum()),
              "leading_no_face_frames": int(np.argmax(valid)) if valid.any() else len(lm_list)}
    return motion, counts


def _meta(path: Path, opts: ExtractOptions, counts: dict) -> dict:
    return {
        "source": {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)},
        "a2p_version": __version__,
        "options": asdict(opts),
        "counts": counts,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _summary(path: Path, motion: Motion, counts: dict, elapsed: float) -> dict:
    e = euler_from_matrix(motion.rotation)
    ranges = {k: [round(float(e[:, i].min()), 2), round(float(e[:, i].max()), 2)]
              for i, k in enumerate(("yaw", "pitch", "roll"))}
    return {
        "input": str(path),
        "fps": motion.fps,
        "duration_s": round(motion.duration, 3),
        "frame_size": list(motion.frame_size),
        **counts,
        "pose_range_deg": ranges,
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(counts["frames"] / max(elapsed, 1e-9), 1),
    }
