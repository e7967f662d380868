"""Render-quality measurements shared by `eval_reenact.py`, `eval_fidelity.py` and
tests/test_render_quality.py.

    reenact_clip(video, frames=100, max_side=512)   self-reenactment: the clip's first frame driven by the
        clip's own motion, compared with the real frames (face-region PSNR) against the baseline that
        repeats the first frame
    fidelity(portrait, motion, size=512)            re-detect the rendered frames with MediaPipe and
        correlate mouth opening, yaw and pitch with what was commanded

Shared material is found at A2P_SHARED, or ../shared beside the repository (never copied into it).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA = SHARED / "media"
CORPUS_TRAIN = SHARED / "corpus" / "train"

BOX_EXPAND = 0.10  # the landmark box is enlarged by this fraction of its width and height (about its centre)
PSNR_CAP = 100.0  # dB, for identical images


class SkipClip(Exception):
    """The clip cannot be evaluated (no face, extraction failed, too short); str() says why."""


# ---- small helpers ------------------------------------------------------------------------------

def portrait_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """The (w, h) `load_portrait(..., PortraitOptions(crop=False, max_size=max_side))` gives an image of w x h:
    scaled down to max_side on the long side, then each side rounded down to even."""
    k = min(1.0, max_side / max(h, w))
    return max(2, int(w * k) // 2 * 2), max(2, int(h * k) // 2 * 2)


def resize_like_portrait(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The same resampling load_portrait applies (cv2 INTER_AREA), so that real frame 0 == portrait."""
    import cv2

    h, w = frame.shape[:2]
    if (w, h) == tuple(size):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def face_box(lm: np.ndarray, shape: tuple[int, ...], expand: float = BOX_EXPAND) -> tuple[int, int, int, int]:
    """(478, 3) pixel landmarks -> integer box x0, y0, x1, y1 (exclusive), enlarged by `expand` and clipped."""
    x0, y0 = float(lm[:, 0].min()), float(lm[:, 1].min())
    x1, y1 = float(lm[:, 0].max()), float(lm[:, 1].max())
    dx, dy = (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
    h, w = shape[:2]
    bx0, by0 = max(0, int(np.floor(x0 - dx))), max(0, int(np.floor(y0 - dy)))
    bx1, by1 = min(w, int(np.ceil(x1 + dx)) + 1), min(h, int(np.ceil(y1 + dy)) + 1)
    return bx0, by0, max(bx1, bx0 + 1), max(by1, by0 + 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 0:
        return PSNR_CAP
    return float(min(PSNR_CAP, 10 * np.log10(255.0**2 / mse)))


def luma(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float64 BT.601 luma, 0..255."""
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma of two (H, W, 3) uint8 images (Wang et al. 2004: Gaussian window 11, sigma 1.5,
    K1 0.01, K2 0.03, data range 255; borders reflected)."""
    import cv2

    x, y = luma(a), luma(b)

    def blur(v):
        return cv2.GaussianBlur(v, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))).mean())


def laplacian_variance(img: np.ndarray) -> float:
    """Sharpness: the variance of the 3x3 Laplacian of the luma of an (H, W, 3) image."""
    import cv2

    return float(cv2.Laplacian(luma(img), cv2.CV_64F).var())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation over the entries finite in both; NaN when either side is constant or < 3 entries."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def gain(commanded: np.ndarray, measured: np.ndarray) -> float:
    """Least-squares slope of measured on commanded (1.0: full amplitude reproduced)."""
    a, b = np.asarray(commanded, np.float64), np.asarray(measured, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    return float((a @ b) / max(a @ a, 1e-12))


# ---- self-reenactment ---------------------------------------------------------------------------

@dataclass
class ReenactResult:
    clip: str
    size: tuple[int, int]  # (w, h) compared
    source_size: tuple[int, int]
    fps: float
    frames: int  # compared (frame 0 excluded: identical by construction)
    filled_frames: int  # frames whose driving landmarks were interpolated (no detection)
    psnr_render: float  # mean over frames, face box
    psnr_baseline: float
    psnr_render_full: float  # mean over frames, whole frame
    psnr_baseline_full: float
    frames_render_better: float  # fraction of frames where the rendering beats the baseline (face box)
    head_motion_deg: float  # the clip's largest yaw/pitch excursion from frame 0 over the compared frames
    mouth_range: float  # max - min of the clip's mouth opening (inner-lip gap / eye-corner distance)
    seconds: float

    @property
    def gain_db(self) -> float:
        return self.psnr_render - self.psnr_baseline

    def record(self) -> dict:
        d = dict(self.__dict__)
        d["gain_db"] = self.gain_db
        d["size"], d["source_size"] = list(self.size), list(self.source_size)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def reenact_clip(video: Path, frames: int = 100, max_side: int = 512, device: str = "cpu", batch: int = 8,
                 keep_frames: tuple[int, ...] = ()) -> tuple[ReenactResult, dict[int, np.ndarray]]:
    """Self-reenactment of `video`'s first `frames` frames. Returns the result and, for the frame indices in
    `keep_frames`, a side-by-side (real | rendered | baseline) picture with the face box drawn.
    Raises SkipClip when the clip cannot be evaluated."""
    from PIL import Image

    from a2pcli.errors import A2PError
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.landmarks import mouth_opening
    from a2pcli.media import probe_video, stream_frames
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.pipeline.reenact import motion_targets
    from a2pcli.pipeline.renderers import render_frames

    t0 = time.perf_counter()
    video = Path(video)
    try:
        info = probe_video(video)
    except A2PError as exc:
        raise SkipClip(f"unreadable: {exc}") from exc
    size = portrait_size(info.width, info.height, max_side)
    sx, sy = size[0] / info.width, size[1] / info.height
    lm_scale = np.array([sx, sy, (sx + sy) / 2], np.float32)

    # real frames at the comparison size; frame 0 at full resolution becomes the portrait
    real, first = [], None
    for i, f in zip(range(frames), stream_frames(info)):
        if i == 0:
            first = f.copy()
        real.append(resize_like_portrait(f, size))
    if len(real) < 3:
        raise SkipClip(f"only {len(real)} frame(s)")

    try:
        motion, _ = extract_motion(video, ExtractOptions(end=(len(real) + 0.5) / info.fps))
    except A2PError as exc:
        raise SkipClip(f"extract failed: {type(exc).__name__}: {exc}") from exc
    if not bool(motion.valid[0]):
        raise SkipClip("no face detected in the first frame")
    n = min(len(real), len(motion))
    motion = motion.slice(0, n)

    with tempfile.TemporaryDirectory(prefix="a2p-reenact-") as tmp:
        png = Path(tmp) / "frame0.png"
        Image.fromarray(first).save(png)
        try:
            portrait = load_portrait(png, PortraitOptions(crop=False, max_size=max_side))
        except A2PError as exc:
            raise SkipClip(f"portrait: {type(exc).__name__}: {exc}") from exc
    if portrait.image.shape[:2] != (size[1], size[0]):
        raise RuntimeError(f"portrait is {portrait.image.shape[1::-1]}, expected {size}")
    if not np.array_equal(portrait.image, real[0]):  # same pixels, same resampling: aligned by construction
        raise RuntimeError("real frame 0 and the portrait differ: the comparison would be misaligned")

    lm_real = motion.landmarks * lm_scale  # the real frames' landmarks at the comparison size
    base = portrait.image
    pr, pb, prf, pbf = [], [], [], []
    kept: dict[int, np.ndarray] = {}
    i = 0
    for chunk in render_frames(portrait, motion_targets(portrait, motion).slice(0, n), device=device, batch=batch):
        for out in chunk:
            x0, y0, x1, y1 = face_box(lm_real[i], out.shape)
            gt = real[i]
            if i > 0:
                pr.append(psnr(out[y0:y1, x0:x1], gt[y0:y1, x0:x1]))
                pb.append(psnr(base[y0:y1, x0:x1], gt[y0:y1, x0:x1]))
                prf.append(psnr(out, gt))
                pbf.append(psnr(base, gt))
            if i in keep_frames:
                kept[i] = _side_by_side(gt, out, base, (x0, y0, x1, y1))
            i += 1
    pr, pb = np.array(pr), np.array(pb)
    euler = motion.euler
    head = float(np.abs(euler[:, :2] - euler[:1, :2]).max())
    mouth = mouth_opening(motion.landmarks)
    res = ReenactResult(
        clip=video.name, size=size, source_size=(info.width, info.height), fps=round(info.fps, 3), frames=len(pr),
        filled_frames=int(np.asarray(motion.filled).sum()),
        psnr_render=float(pr.mean()), psnr_baseline=float(pb.mean()),
        psnr_render_full=float(np.mean(prf)), psnr_baseline_full=float(np.mean(pbf)),
        frames_render_better=float((pr > pb).mean()), head_motion_deg=head,
        mouth_range=float(mouth.max() - mouth.min()), seconds=time.perf_counter() - t0,
    )
    return res, kept


def _side_by_side(real: np.ndarray, rendered: np.ndarray, baseline: np.ndarray, box) -> np.ndarray:
    import cv2

    tiles = []
    for im in (real, rendered, baseline):
        im = im.copy()
        cv2.rectangle(im, box[:2], (box[2] - 1, box[3] - 1), (0, 255, 0), 1)
        tiles.append(im)
    return np.concatenate(tiles, 1)


def summarise_reenact(results: list[ReenactResult], skipped: dict[str, str]) -> dict:
    gains = np.array([r.gain_db for r in results])
    return {
        "clips": len(results),
        "skipped": len(skipped),
        "beats_baseline_fraction": float((gains > 0).mean()) if len(gains) else float("nan"),
        "mean_gain_db": float(gains.mean()) if len(gains) else float("nan"),
        "median_gain_db": float(np.median(gains)) if len(gains) else float("nan"),
        "mean_psnr_render": float(np.mean([r.psnr_render for r in results])) if results else float("nan"),
        "mean_psnr_baseline": float(np.mean([r.psnr_baseline for r in results])) if results else float("nan"),
        "bar": {"beats_baseline_fraction": 0.9, "mean_gain_db": 1.0},
        "passes": bool(len(gains) and (gains > 0).mean() >= 0.9 and gains.mean() >= 1.0),
    }


# ---- landmark fidelity --------------------------------------------------------------------------

@dataclass
class FidelityResult:
    portrait: str
    size: tuple[int, int]
    frames: int
    redetected: int  # rendered frames where MediaPipe found a face
    corr: dict  # name -> Pearson r
    gains: dict  # name -> least-squares slope measured / commanded
    ranges: dict  # commanded ranges: yaw/pitch degrees, mouth opening
    seconds: float

    def record(self) -> dict:
        def r(v):
            if isinstance(v, float):
                return round(v, 4) if np.isfinite(v) else None
            return v

        return {"portrait": self.portrait, "size": list(self.size), "frames": self.frames,
                "redetected": self.redetected, "corr": {k: r(v) for k, v in self.corr.items()},
                "gains": {k: r(v) for k, v in self.gains.items()}, "ranges": {k: r(v) for k, v in self.ranges.items()},
                "seconds": round(self.seconds, 2)}


def driving(video: Path, frames: int | None = None):
    """The driving Motion of `video` (its first `frames` frames), as `driving_motion` would give it."""
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.media import probe_video

    end = None
    if frames is not None:
        end = (frames + 0.5) / probe_video(Path(video)).fps
    motion, _ = extract_motion(Path(video), ExtractOptions(end=end))
    first = int(np.argmax(np.asarray(motion.valid, bool)))
    stop = len(motion) if frames is None else min(len(motion), first + frames)
    return motion.slice(first, stop)


def subsample(motion, step: int):
    """Every `step`-th frame of `motion` (fps divided accordingly): a long clip's whole range of motion in
    few frames, for quick checks."""
    from dataclasses import replace

    idx = np.arange(0, len(motion), step)
    arrays = ("rotation", "translation", "scale", "valid", "filled", "landmarks", "expression")
    return replace(motion, fps=motion.fps / step,
                   **{k: getattr(motion, k)[idx] for k in arrays if getattr(motion, k) is not None})


def redetect(frames) -> np.ndarray:
    """MediaPipe (video mode) on an iterable of (H, W, 3) frames -> (T, 478, 3) landmarks, NaN where none."""
    from a2pcli.landmarks import N_LANDMARKS, FaceMeshDetector, face_size

    out = []
    with FaceMeshDetector(video=True) as det:
        for f in frames:
            faces = det.detect(np.ascontiguousarray(f))
            out.append(max(faces, key=face_size) if faces else np.full((N_LANDMARKS, 3), np.nan, np.float32))
    return np.stack(out)


def yaw_pitch(lm: np.ndarray) -> np.ndarray:
    """(T, 478, 3) landmarks (NaN rows allowed) -> (T, 2) yaw, pitch degrees (NaN where missing)."""
    from a2pcli.headpose import euler_from_matrix, fit_pose, load_reference

    ok = np.isfinite(lm).all((1, 2))
    out = np.full((len(lm), 2), np.nan, np.float32)
    if ok.any():
        r, _, _ = fit_pose(lm[ok], load_reference())
        out[ok] = euler_from_matrix(r)[:, :2]
    return out


def fidelity(portrait_path: Path, motion, size: int = 512, device: str = "cpu", batch: int = 8,
             keep_frames: tuple[int, ...] = ()) -> tuple[FidelityResult, dict[int, np.ndarray]]:
    """Drive `portrait_path` (crop=True, `size`) with `motion`; re-detect every rendered frame; correlate."""
    from a2pcli.headpose import euler_from_matrix
    from a2pcli.landmarks import mouth_opening
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.pipeline.reenact import motion_targets
    from a2pcli.pipeline.renderers import render_frames

    t0 = time.perf_counter()
    portrait = load_portrait(Path(portrait_path), PortraitOptions(crop=True, size=size))
    tgt = motion_targets(portrait, motion)
    kept: dict[int, np.ndarray] = {}

    def frames():
        i = 0
        for chunk in render_frames(portrait, tgt, device=device, batch=batch):
            for f in chunk:
                if i in keep_frames:
                    kept[i] = f.copy()
                i += 1
                yield f

    lm = redetect(frames())
    n = len(lm)
    found = np.isfinite(lm).all((1, 2))

    drive_e = motion.euler[:n, :2] - motion.euler[:1, :2]
    tgt_e = euler_from_matrix(tgt.rotation[:n])[:, :2]
    tgt_e = tgt_e - tgt_e[:1]
    got_e = yaw_pitch(lm)
    got_e = got_e - (got_e[:1] if found[0] else np.nanmedian(got_e[:5], 0, keepdims=True))
    m_drive = mouth_opening(motion.landmarks[:n])
    m_tgt = mouth_opening(tgt.landmarks[:n])
    m_got = mouth_opening(lm)

    corr = {
        "mouth_vs_driver": pearson(m_drive, m_got),
        "mouth_vs_target": pearson(m_tgt, m_got),
        "yaw": pearson(drive_e[:, 0], got_e[:, 0]),
        "pitch": pearson(drive_e[:, 1], got_e[:, 1]),
        "yaw_vs_target": pearson(tgt_e[:, 0], got_e[:, 0]),
        "pitch_vs_target": pearson(tgt_e[:, 1], got_e[:, 1]),
    }
    gains = {
        "mouth_vs_target": gain(m_tgt, m_got),
        "yaw": gain(drive_e[:, 0], got_e[:, 0]),
        "pitch": gain(drive_e[:, 1], got_e[:, 1]),
    }
    ranges = {
        "yaw_deg": float(np.ptp(drive_e[:, 0])), "pitch_deg": float(np.ptp(drive_e[:, 1])),
        "mouth_driver": float(np.ptp(m_drive)), "mouth_target": float(np.ptp(m_tgt)),
    }
    res = FidelityResult(Path(portrait_path).name, portrait.image.shape[1::-1], n, int(found.sum()), corr, gains,
                         ranges, time.perf_counter() - t0)
    return res, kept


FIDELITY_BAR = 0.9
FIDELITY_KEYS = ("mouth_vs_driver", "yaw", "pitch")


def fidelity_passes(res: FidelityResult, bar: float = FIDELITY_BAR) -> bool:
    return all(np.isfinite(res.corr[k]) and res.corr[k] >= bar for k in FIDELITY_KEYS)


# ---- reports ------------------------------------------------------------------------------------

def code_version() -> dict:
    """The a2p version and the repository's commit (with a flag for uncommitted changes to a2pcli/)."""
    import subprocess

    from a2pcli import __version__

    out = {"a2p": __version__}
    root = Path(__file__).resolve().parents[1]
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "a2pcli"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        out["a2pcli_modified"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        out["commit"] = None
    return out


def fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
