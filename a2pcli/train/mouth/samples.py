"""The mouth model's training samples, made from talking videos by the renderer itself, cached.

A frame of a clip is the portrait; every `stride`-th other frame of the clip is a target: its landmarks,
retargeted onto the portrait, drive the renderer's own warp (WarpRenderer.mouth_crops), and its pixels, cropped
the same way, are the truth. Per clip, a few portrait frames (the first, the widest open mouth, a closed one);
only the targets the renderer would have the model paint are kept.

The landmarks of a clip come from a `.pose` of the same stem in a --poses folder when it was extracted from this
very file, else from the shared data cache's entry for the clip (a2pcli.train.clips: the one audio2motion's
training reads, so MediaPipe runs once per clip for both), else from MediaPipe now (a clip without speech).

Each clip's samples are one entry of the shared data cache (clips.entry_path, keyed by the video's content and
the preset's crop settings), made once under its lock (clips.cached_entry) and read by every later run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from a2pcli.errors import A2PError, InputError
from a2pcli.progress import Reporter
from a2pcli.train.clips import ClipSource, cached_entry, entry_path
from a2pcli.train.mouth.presets import MouthPreset

SAMPLES_VERSION = 1  # bump when what a cache entry holds changes
DATA_MAX_SIDE = 512  # frames are scaled down to this long side (as a2p's evaluation frames the portrait)
MIN_FACE_SHARE = 0.5  # clips with a face in fewer of their frames are skipped
SAMPLE_ARRAYS = ("warped", "truth", "interior", "lips", "portrait_of", "strength", "change", "target_frame")


@dataclass
class ClipSamples:
    """One clip's training samples. S: the crop side (MouthConfig.size)."""

    source: ClipSource
    portraits: np.ndarray  # (P, S, S, 4) uint8: each portrait frame's own mouth crop, RGB and inner-lip mask
    portrait_frame: np.ndarray  # (P,) int32 frame index of each portrait
    warped: np.ndarray  # (N, S, S, 3) uint8: the warp of the portrait for the target, in the target's crop
    truth: np.ndarray  # (N, S, S, 3) uint8: the real target frame in the same crop
    interior: np.ndarray  # (N, S, S) uint8: where the portrait's own interior landed in the warp
    lips: np.ndarray  # (N, 2, S, S) uint8: the target's inner and outer lip polygons
    portrait_of: np.ndarray  # (N,) int32 index into portraits
    strength: np.ndarray  # (N,) float32: how much the renderer applies the painting (WarpRenderer.mouth_strength)
    change: np.ndarray  # (N,) float32 face units: target lip gap minus the portrait's
    target_frame: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.warped)


def limit_per_speaker(sources: list[ClipSource], most: int) -> list[ClipSource]:
    """At most `most` clips of each speaker, evenly spread over its clips sorted by name."""
    by: dict[str, list[ClipSource]] = {}
    for s in sources:
        by.setdefault(s.speaker, []).append(s)
    keep = set()
    for clips in by.values():
        pick = np.unique(np.round(np.linspace(0, len(clips) - 1, min(most, len(clips)))).astype(int))
        keep.update(clips[i].name for i in pick)
    return [s for s in sources if s.name in keep]


def samples_entry(cache_dir: Path, src: ClipSource, p: MouthPreset) -> Path:
    """The clip's cache entry for the preset's crop and sampling settings."""
    cfg = p.model
    return entry_path(cache_dir, f"mouth samples v{SAMPLES_VERSION}", src.video, f"s{cfg.size}", f"u{cfg.crop_units}",
                      f"g{cfg.region_grow}", f"p{p.portraits_per_clip}", f"k{p.stride}", f"n{p.max_targets}",
                      f"max{p.max_clip_s}")


def samples_arrays(clip: ClipSamples) -> dict[str, np.ndarray]:
    """A clip's samples as the arrays of its cache entry."""
    return {"portraits": clip.portraits, "portrait_frame": clip.portrait_frame, "name": np.array(clip.source.name),
            **{k: getattr(clip, k) for k in SAMPLE_ARRAYS}}


def _from_entry(a: dict[str, np.ndarray] | None, src: ClipSource, p: MouthPreset) -> ClipSamples | None:
    """The cached samples, or None when the entry is missing, of another layout, or inconsistent."""
    if a is None or not {"portraits", "portrait_frame", *SAMPLE_ARRAYS} <= set(a):
        return None
    clip = ClipSamples(src, a["portraits"], a["portrait_frame"], *(a[k] for k in SAMPLE_ARRAYS))
    s, n = p.model.size, len(clip.warped)
    shapes = {"portraits": (len(clip.portraits), s, s, 4), "warped": (n, s, s, 3), "truth": (n, s, s, 3),
              "interior": (n, s, s), "lips": (n, 2, s, s)}
    ok = all(getattr(clip, k).shape == v and getattr(clip, k).dtype == np.uint8 for k, v in shapes.items())
    ok = ok and all(len(getattr(clip, k)) == n for k in ("portrait_of", "strength", "change", "target_frame"))
    ok = ok and np.isfinite(clip.strength).all() and np.isfinite(clip.change).all()
    ok = ok and (n == 0 or (clip.portrait_of.min() >= 0 and clip.portrait_of.max() < len(clip.portraits)))
    return clip if ok else None


def prepare_clip(src: ClipSource, cache_dir: Path, p: MouthPreset, poses: tuple[Path, ...] = ()) -> ClipSamples:
    """The clip's samples, from the cache when it holds them (made once, see clips.cached_entry)."""
    arrays = cached_entry(samples_entry(cache_dir, src, p), lambda: samples_arrays(build_samples(src, p, poses,
                                                                                               cache_dir)),
                          usable=lambda a: _from_entry(a, src, p) is not None)
    clip = _from_entry(arrays, src, p)
    if clip is None:
        raise InputError("gives unusable mouth samples (of the wrong shape or not finite)", subject=str(src.video))
    return clip


def prepare_samples(sources: list[ClipSource], cache_dir: Path, p: MouthPreset, poses: tuple[Path, ...],
                    reporter: Reporter, process: tuple[int, int] | None = None) -> list[ClipSamples]:
    """Every clip's samples that can be made, in the order of `sources`; the others are reported as warnings and
    skipped. `process`: (rank, processes) of this process among several (None: torchrun's, from the
    environment): each starts with its own share, sources[rank::processes], then reads the others' (cached)."""
    if process is None:
        from a2pcli.launch import launch_from_env

        launch = launch_from_env()
        process = (launch.rank, launch.world_size)
    rank, n = process
    order = list(range(rank, len(sources), n)) + [i for i in range(len(sources)) if i % n != rank]
    clips: dict[int, ClipSamples] = {}
    reporter.stage("prepare data (warped mouths, cached)", len(sources))
    for i in order:
        try:
            clip = prepare_clip(sources[i], cache_dir, p, poses)
            if len(clip):
                clips[i] = clip
            else:
                reporter.warn(f"skipped {sources[i].name}: no frame where the mouth changes")
        except A2PError as exc:
            reporter.warn(f"skipped {sources[i].name}: {exc.one_line()}")
        reporter.advance()
    return [clips[i] for i in sorted(clips)]


# --- making the samples -----------------------------------------------------------------------------------


def clip_motion(src: ClipSource, poses: tuple[Path, ...], max_clip_s: float | None, cache_dir: Path):
    """The clip's Motion (at the video's own size): see the module doc for where it comes from."""
    from a2pcli.cache import sha256_file
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.motion import load_motion

    for folder in poses:
        path = Path(folder) / f"{src.video.stem}.pose"
        if not path.is_file():
            continue
        try:
            motion = load_motion(path)
        except A2PError:
            continue
        meta = motion.meta or {}
        opts = meta.get("options", {})
        same = (meta.get("source", {}).get("sha256") == sha256_file(src.video) and not opts.get("smooth")
                and opts.get("start") is None and opts.get("end") is None and opts.get("fps") is None)
        if same and motion.landmarks is not None and motion.expression is not None:
            if max_clip_s is not None:
                motion = motion.slice(0, int(max_clip_s * motion.fps) + 1)
            return motion
    shared = _shared_clip_motion(src, max_clip_s, cache_dir)
    if shared is not None:
        return shared
    motion, _ = extract_motion(src.video, ExtractOptions(end=max_clip_s), Reporter())
    return motion


def _shared_clip_motion(src: ClipSource, max_clip_s: float | None, cache_dir: Path):
    """The clip's Motion from its entry of prepared talking clips (a2pcli.train.clips.prepare_clip), or None
    when it has none (a clip without speech)."""
    from a2pcli.headpose import apply_pose, load_reference
    from a2pcli.media import probe_video
    from a2pcli.motion import Motion
    from a2pcli.train.clips import prepare_clip as prepare_talking_clip

    try:
        clip = prepare_talking_clip(src, cache_dir, max_clip_s)
    except A2PError:
        return None
    ref = load_reference().mean
    info = probe_video(src.video)
    landmarks = apply_pose(ref[None] + clip.expression, clip.rotation, clip.translation, clip.scale)
    return Motion(fps=clip.fps, rotation=clip.rotation, translation=clip.translation, scale=clip.scale,
                  valid=clip.valid, filled=np.zeros(len(clip.valid), bool), frame_size=(info.width, info.height),
                  landmarks=landmarks.astype(np.float32), expression=clip.expression, reference=ref)


def _scaled(motion, sx: float, sy: float):
    """The motion of the same video decoded at (sx, sy) times its size."""
    k = np.array([sx, sy, (sx + sy) / 2], np.float32)
    return replace(motion, landmarks=motion.landmarks * k, translation=motion.translation * k,
                   scale=motion.scale * float(k[2]), frame_size=(int(round(motion.frame_size[0] * sx)),
                                                                 int(round(motion.frame_size[1] * sy))))


def pick_portraits(opening: np.ndarray, usable: np.ndarray, count: int, name: str) -> list[int]:
    """Portrait frames of a clip: the first usable one, the widest open mouth, and a closed mouth picked
    by the clip's name (so the choice does not depend on the order clips are prepared in)."""
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        return []
    picks = [int(idx[0])]
    if count > 1:
        picks.append(int(idx[np.argmax(opening[idx])]))
    if count > 2:
        closed = idx[opening[idx] <= np.percentile(opening[idx], 25)]
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        picks.append(int(rng.choice(closed)))
    out = []
    for i in picks:
        if i not in out:
            out.append(i)
    return out


def empty_samples(src: ClipSource, size: int) -> ClipSamples:
    """No samples (a clip where the mouth never changes enough to be painted)."""
    s = size
    empty = {k: np.zeros((0,) + shape, dt) for k, shape, dt in (
        ("warped", (s, s, 3), np.uint8), ("truth", (s, s, 3), np.uint8), ("interior", (s, s), np.uint8),
        ("lips", (2, s, s), np.uint8), ("portrait_of", (), np.int32), ("strength", (), np.float32),
        ("change", (), np.float32), ("target_frame", (), np.int32))}
    return ClipSamples(src, np.zeros((0, s, s, 4), np.uint8), np.zeros(0, np.int32), **empty)


def build_samples(src: ClipSource, p: MouthPreset, poses: tuple[Path, ...] = (), cache_dir: Path | None = None
                  ) -> ClipSamples:
    """Render the clip's samples (see the module doc)."""
    from a2pcli.headpose import canonical, load_reference
    from a2pcli.landmarks import mouth_opening
    from a2pcli.media import decode_size, probe_video, stream_frames
    from a2pcli.train.clips import data_cache_dir

    motion = clip_motion(src, poses, p.max_clip_s, cache_dir or data_cache_dir())
    info = probe_video(src.video)
    size = decode_size(info, DATA_MAX_SIDE)
    frames = [f.copy() for f in stream_frames(info, size=size, end=p.max_clip_s)]
    n = min(len(frames), len(motion))
    usable = np.asarray(motion.valid[:n], bool) & ~np.asarray(motion.filled[:n], bool)
    if n < 3 or usable.mean() < MIN_FACE_SHARE:
        raise InputError(f"a face in only {int(usable.sum())} of {n} frames", subject=str(src.video))
    motion = _scaled(motion.slice(0, n), size[0] / info.width, size[1] / info.height)
    ref = load_reference()
    opening = mouth_opening(canonical(motion.landmarks, motion.rotation, motion.translation, motion.scale))
    parts: list[dict] = []
    portraits, portrait_frame = [], []
    for pf in pick_portraits(opening, usable, p.portraits_per_clip, src.name):
        part = portrait_samples(frames, motion, usable, pf, p, ref)
        if part is None:
            continue
        part["portrait_of"] = np.full(len(part["warped"]), len(portraits), np.int32)
        portraits.append(part.pop("portrait"))
        portrait_frame.append(pf)
        parts.append(part)
    if not parts:
        return empty_samples(src, p.model.size)
    cat = {k: np.concatenate([q[k] for q in parts]) for k in SAMPLE_ARRAYS}
    return ClipSamples(src, np.stack(portraits), np.array(portrait_frame, np.int32), **cat)


def portrait_samples(frames: list[np.ndarray], motion, usable: np.ndarray, pf: int, p: MouthPreset, ref) -> dict | None:
    """One portrait frame's samples: its targets retargeted and warped by the renderer."""
    import cv2

    from a2pcli.headpose import canonical
    from a2pcli.mouth import lip_gap
    from a2pcli.render import WarpRenderer
    from a2pcli.retarget import FaceTargets, RetargetOptions, portrait_face, retarget

    cfg = p.model
    face = portrait_face(motion.landmarks[pf], ref)
    tgt = retarget(face, motion, RetargetOptions(region="all", ref_frame=pf), ref.mean)
    js = np.flatnonzero(usable)
    js = js[(js % p.stride == pf % p.stride) & (js != pf)]
    if len(js) > p.max_targets:
        js = js[np.round(np.linspace(0, len(js) - 1, p.max_targets)).astype(int)]
    if len(js) == 0:
        return None
    sub = FaceTargets(tgt.landmarks[js], tgt.rotation[js], tgt.translation[js], tgt.scale[js])
    renderer = WarpRenderer(frames[pf], face, sub, still_background=False)  # crops come from the portrait itself
    strength = renderer.mouth_strength(sub)
    keep = strength > 0.01
    if not keep.any():
        return None
    js, strength = js[keep], strength[keep]
    sub = FaceTargets(sub.landmarks[keep], sub.rotation[keep], sub.translation[keep], sub.scale[keep])
    crops = renderer.mouth_crops(sub, cfg)
    truth = np.stack([cv2.warpAffine(frames[j], a, (cfg.size, cfg.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE) for j, a in zip(js, crops["affine"])])
    gap = lip_gap(canonical(sub.landmarks, sub.rotation, sub.translation, sub.scale))
    own = crops["portrait"]
    portrait = np.concatenate([own[:3].transpose(1, 2, 0), own[3:].transpose(1, 2, 0) * 255], 2)
    return {"warped": crops["warped"], "truth": truth, "interior": crops["interior"], "lips": crops["lips"],
            "strength": strength.astype(np.float32), "change": (gap - renderer.portrait_gap).astype(np.float32),
            "target_frame": js.astype(np.int32), "portrait": np.round(portrait).clip(0, 255).astype(np.uint8)}
