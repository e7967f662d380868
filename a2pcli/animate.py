"""Portrait + motion -> video: the pipeline behind `pose2vid` and `vid2vid`.

    portrait = load_portrait(path, PortraitOptions())      # image at output framing, its face
    motion, notes = driving_motion(path, reporter)          # .pose / .npy / video -> Motion from its first face
    summary = animate(portrait, motion, out, AnimateOptions(), audio=None, reporter=reporter)

Frames are rendered in batches and streamed into the encoder: memory is bounded for any length.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from a2pcli.errors import InputError, NoFaceError
from a2pcli.motion import Motion
from a2pcli.progress import Reporter
from a2pcli.retarget import PortraitFace, RetargetOptions, Targets

CROP_SIDE = 4.2  # face units: side of the face-centred square of --crop
CROP_RAISE = 0.25  # face units: the crop centre sits this far above the face centre (room for hair)
CPU_BATCH = 8
GPU_BATCH_MAX = 16  # measured on an H100 at 512x512: 16 frames per batch ran faster than 64
GPU_MEMORY_SHARE = 0.5  # of free VRAM, for --batch-size auto
_NO_FACE_HINT = "use a picture where one face is visible, roughly frontal, at least about 100 pixels tall"


@dataclass(frozen=True)
class PortraitOptions:
    crop: bool = False
    size: int = 512  # with crop
    max_size: int = 1024  # without crop
    face_index: int | None = None


@dataclass
class Portrait:
    image: np.ndarray  # (H, W, 3) uint8 at output framing
    face: PortraitFace
    source: Path
    faces_found: int
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AnimateOptions:
    region: str = "all"
    pose_scale: float = 1.0
    expression_scale: float = 1.0
    ref_frame: int = 0
    fps: float | None = None  # None: the motion's
    crf: int = 18
    device: str = "auto"
    batch_size: str = "auto"
    frames_dir: Path | None = None


def _even(n: float) -> int:
    return max(2, int(n) // 2 * 2)


def load_portrait(path: Path, opts: PortraitOptions = PortraitOptions(), reporter: Reporter | None = None) -> Portrait:
    """The portrait at its output framing and resolution, with its face's landmarks and pose."""
    import cv2

    from a2pcli.headpose import fit_pose, load_reference
    from a2pcli.landmarks import detect_image
    from a2pcli.media import load_image
    from a2pcli.retarget import portrait_face

    reporter = reporter or Reporter()
    reporter.stage("find the face", total=None)
    image = load_image(path)
    faces = detect_image(image)
    if not faces:
        raise NoFaceError("no face found in the portrait", subject=str(path), remedy=_NO_FACE_HINT)
    notes = []
    if opts.face_index is not None:
        if opts.face_index >= len(faces):
            raise InputError(f"--face-index {opts.face_index}, but the portrait shows {len(faces)} face(s)",
                             subject=str(path), remedy=f"use 0..{len(faces) - 1} (largest first)")
        lm = faces[opts.face_index]
    else:
        lm = faces[0]
        if len(faces) > 1:
            notes.append(f"{len(faces)} faces in the portrait: animating the largest (choose with --face-index)")
            reporter.warn(notes[-1])
    ref = load_reference()
    h, w = image.shape[:2]
    if opts.crop:
        r, t, s = fit_pose(lm[None], ref)
        # the face-centred square, moved (and if need be shrunk) to stay inside the picture
        side = min(CROP_SIDE * float(s[0]), float(w), float(h))
        cx, cy = float(t[0, 0]), float(t[0, 1]) - CROP_RAISE * float(s[0])
        x0 = float(np.clip(cx - side / 2, 0, w - side))
        y0 = float(np.clip(cy - side / 2, 0, h - side))
        k = opts.size / side
        out = _even(opts.size)
        m = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]], np.float32)
        image = cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        lm = np.concatenate([(lm[:, :2] - [x0, y0]) * k, lm[:, 2:] * k], 1).astype(np.float32)
    else:
        k = min(1.0, opts.max_size / max(h, w))
        nw, nh = _even(w * k), _even(h * k)
        if (nw, nh) != (w, h):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            sx, sy = nw / w, nh / h
            lm = (lm * np.array([sx, sy, (sx + sy) / 2], np.float32)).astype(np.float32)
    return Portrait(np.ascontiguousarray(image), portrait_face(lm, ref), Path(path), len(faces), notes)


def driving_motion(path: Path, reporter: Reporter | None = None) -> tuple[Motion, list[str]]:
    """A .pose file, an AniPortrait .npy template, or a video (landmarks extracted now), starting at the
    first frame that has a face."""
    from a2pcli.media import is_image

    reporter = reporter or Reporter()
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK") or magic == b"\x93NUMPY":
        from a2pcli.motion import load_motion

        motion = load_motion(path)
    else:
        if is_image(path):
            raise InputError("the driving input is an image", subject=str(path),
                             remedy="pass a video, a .pose file, or an AniPortrait .npy template")
        from a2pcli.extract import extract_motion

        motion, _ = extract_motion(path, reporter=reporter)
    notes = []
    valid = np.asarray(motion.valid, bool)
    if not valid.any():
        raise NoFaceError("no frame of the driving motion has a face", subject=str(path),
                          remedy="use a driving video where a face is visible")
    first = int(np.argmax(valid))
    if first > 0:
        motion = motion.slice(first, len(motion))
        notes.append(f"the driving motion's first {first} frames have no face: motion starts at frame {first}")
    return motion, notes


def resample(tgt: Targets, n: int, src_fps: float, dst_fps: float) -> Targets:
    """Targets at `dst_fps`, `n` frames, by linear interpolation in time (rotations re-orthonormalised)."""
    t = np.arange(n) * (src_fps / dst_fps)
    i0 = np.clip(np.floor(t).astype(int), 0, len(tgt) - 1)
    i1 = np.clip(i0 + 1, 0, len(tgt) - 1)
    a = (t - np.floor(t)).astype(np.float32)

    def lerp(v: np.ndarray) -> np.ndarray:
        w = a.reshape(-1, *([1] * (v.ndim - 1)))
        return (v[i0] * (1 - w) + v[i1] * w).astype(np.float32)

    u, _, vt = np.linalg.svd(lerp(tgt.rotation))
    rot = (u @ vt).astype(np.float32)
    return Targets(lerp(tgt.landmarks), rot, lerp(tgt.translation), lerp(tgt.scale))


def bytes_per_frame(portrait_shape: tuple[int, int], unit: float) -> int:
    """GPU memory one frame of a batch needs: the dense field, sampling grid and frame at the working
    region's size, plus the spline's kernel matrix."""
    from a2pcli.render import ROI_HALF

    h, w = portrait_shape
    side = min(max(h, w), int(2 * ROI_HALF * unit) + 2)
    region = min(h, side) * min(w, side)
    return int(region * 4 * 8 + 4500 * 260 * 4 * 2)  # measured peak at 512x512: 12 MB per frame


def plan_batch(batch_size: str, device: str, per_frame: int) -> int:
    if batch_size != "auto":
        return int(batch_size)
    if not device.startswith("cuda"):
        return CPU_BATCH
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(np.clip(free * GPU_MEMORY_SHARE // max(per_frame, 1), 1, GPU_BATCH_MAX))


def animate(portrait: Portrait, motion: Motion, output: Path, opts: AnimateOptions = AnimateOptions(),
            audio=None, reporter: Reporter | None = None, render=None) -> dict:
    """Render `motion` on `portrait` into the video file `output` (already a temp path: callers use
    outputs.atomic_path). `audio`: an encode.AudioTrack to mux, or None. `render`: the renderer,
    called as render_video is (default: render_video, the embedded renderer). Returns the run's summary."""
    from a2pcli.headpose import load_reference
    from a2pcli.retarget import retarget

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    notes = list(portrait.notes)
    ref = load_reference()
    ropts = RetargetOptions(opts.region, opts.pose_scale, opts.expression_scale, opts.ref_frame)
    tgt = retarget(portrait.face, motion, ropts, ref.mean)
    fps = float(opts.fps or motion.fps)
    n = len(tgt) if fps == motion.fps else max(1, int(round(len(tgt) * fps / motion.fps)))
    if audio is not None:
        n_audio = max(1, int(np.floor(audio.duration_s * fps + 1e-6)))
        if n_audio < n:
            notes.append(f"the audio ({audio.duration_s:.2f} s) is shorter than the motion ({n / fps:.2f} s): "
                         f"the video is cut to the audio")
            n = n_audio
        elif n_audio > n:
            notes.append(f"the audio ({audio.duration_s:.2f} s) is longer than the motion ({n / fps:.2f} s): "
                         f"the audio is cut to the video")
    if fps != motion.fps:
        tgt = resample(tgt, n, motion.fps, fps)
    else:
        tgt = _cut(tgt, n)
    summary = (render or render_video)(portrait, tgt, fps, output, opts, audio, reporter)
    summary["notes"] = notes + summary["notes"]
    summary["elapsed_s"] = round(time.perf_counter() - t0, 3)
    summary["frames_per_s"] = round(summary["frames"] / max(summary["elapsed_s"], 1e-9), 1)
    return summary


def render_video(portrait: Portrait, tgt: Targets, fps: float, output: Path, opts: AnimateOptions = AnimateOptions(),
                 audio=None, reporter: Reporter | None = None) -> dict:
    """Render the target landmarks on `portrait` into the video file `output`, streaming batches into the
    encoder (with `audio` muxed). The device preflight runs here, before anything heavy loads."""
    from a2pcli.device import JobEstimate, preflight
    from a2pcli.encode import VideoWriter
    from a2pcli.render import WarpRenderer

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    n = len(tgt)
    h, w = portrait.image.shape[:2]
    per_frame = bytes_per_frame((h, w), portrait.face.scale)
    fixed = h * w * 16  # the portrait and the frames' staging on the device
    # an explicit --batch-size must fit; with auto, one frame must, and the batch grows into free memory
    need = per_frame * (int(opts.batch_size) if opts.batch_size != "auto" else 1) + fixed
    choice = preflight(opts.device, JobEstimate("render", vram_bytes=need))
    batch = plan_batch(opts.batch_size, choice.device, per_frame)
    vram = per_frame * batch + fixed if choice.device.startswith("cuda") else 0
    reporter.info(f"device: {choice.device} ({choice.name}); {choice.reason}; batches of {batch} frames"
                  + (f", about {vram / 1e9:.1f} GB of GPU memory" if vram else ""))

    renderer = WarpRenderer(portrait.image, portrait.face, tgt, device=choice.device)
    t_setup = time.perf_counter() - t0
    reporter.stage("render", total=n)
    t1 = time.perf_counter()
    if opts.frames_dir is not None:
        Path(opts.frames_dir).mkdir(parents=True, exist_ok=True)
    with VideoWriter(output, (w, h), fps, crf=opts.crf, audio=audio, frames_dir=opts.frames_dir) as writer:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            writer.write_batch(renderer.render(_cut(tgt, stop, start)))
            reporter.advance(stop - start)
    elapsed = time.perf_counter() - t0
    return {
        "frames": n,
        "fps": fps,
        "duration_s": round(n / fps, 3),
        "size": [w, h],
        "device": choice.device,
        "batch_size": batch,
        "vram_estimate_gb": round(vram / 1e9, 2),
        "audio": None if audio is None else str(audio.path),
        "notes": list(renderer.notes),
        "timings_s": {"setup": round(t_setup, 3), "render_and_encode": round(time.perf_counter() - t1, 3)},
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(n / max(elapsed, 1e-9), 1),
    }


def render_frames(portrait: Portrait, motion: Motion, opts: AnimateOptions = AnimateOptions(),
                  n: int | None = None, device: str = "cpu", batch: int = CPU_BATCH):
    """In-memory rendering (evaluation, tests): yields (B, H, W, 3) uint8 batches of `motion` on `portrait`."""
    from a2pcli.headpose import load_reference
    from a2pcli.render import WarpRenderer
    from a2pcli.retarget import retarget

    ropts = RetargetOptions(opts.region, opts.pose_scale, opts.expression_scale, opts.ref_frame)
    tgt = retarget(portrait.face, motion, ropts, load_reference().mean)
    n = len(tgt) if n is None else min(n, len(tgt))
    renderer = WarpRenderer(portrait.image, portrait.face, _cut(tgt, n), device=device)
    for start in range(0, n, batch):
        yield renderer.render(_cut(tgt, min(n, start + batch), start))


def _cut(tgt: Targets, stop: int, start: int = 0) -> Targets:
    return Targets(tgt.landmarks[start:stop], tgt.rotation[start:stop], tgt.translation[start:stop],
                   tgt.scale[start:stop])


def options_record(**kw) -> dict:
    """Options as JSON-ready values for the --meta sidecar."""
    out = {}
    for k, v in kw.items():
        if hasattr(v, "__dataclass_fields__"):
            v = asdict(v)
        out[k] = v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)
    return out
