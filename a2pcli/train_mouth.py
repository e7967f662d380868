"""Training the mouth model (a2pcli.mouthnet) on talking videos, in self-reenactment.

    train(TrainOptions(...), reporter) -> summary dict        (what `a2p train mouth` calls)

A frame of a clip is the portrait, later (and earlier) frames of the same clip are targets: their landmarks
drive the warp, their pixels are the truth. Stages, each a function below:
  1. find_sources: videos under the data folders (recursively). Speaker = the parent folder's name, or
     the mapping of a `speakers.tsv` (file name <tab> speaker) in a data folder.
  2. prepare_clip, cached in OUT/cache/<key>.npz: the clip's landmarks (a `.pose` of the same stem from
     --poses when its recorded source matches, else MediaPipe now); frames scaled to DATA_MAX_SIDE; a few
     portrait frames (the first, the widest open mouth, a closed one); for each, every `stride`-th frame as a
     target, retargeted and warped by the renderer itself (WarpRenderer.mouth_crops), with the real frame's
     crop as the truth. Only the frames the renderer would have the model paint are kept.
  3. split by speaker: --val-speakers, else a share of the speakers picked by the seed.
  4. the loop: batches drawn with more weight where the mouth changes most; flips and colour changes applied
     to portrait, warp and truth alike (the model must take its colours from the portrait); loss: L1, SSIM and
     image-gradient terms inside the painted region, and an adversarial patch loss after a warm-up (a blurry,
     averaged mouth is not accepted); an exponential moving average of the weights; validation each epoch
     on the held-out speakers (SSIM, PSNR and sharpness of the crops against the real ones, and the warp
     alone for scale); a checkpoint (weights_only-safe) each epoch; --resume continues from one.
  5. export: config.json + model.safetensors in OUT, loadable with a2pcli.mouthnet.load_model(OUT).

Seeded: the split, every batch and every augmentation derive from --seed and the epoch number.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from a2pcli.errors import A2PError, InputError, OutputError
from a2pcli.mouthnet import MouthConfig
from a2pcli.progress import Reporter

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v")
CACHE_VERSION = 1  # bump when what a cache file holds changes
DATA_MAX_SIDE = 512  # frames are scaled down to this long side (as a2p's evaluation frames the portrait)
CHECKPOINT_DIR, LAST_CHECKPOINT = "checkpoints", "last.pt"
LOG_FILE = "train_log.jsonl"
OPEN_MARGIN = 0.03  # face units: a target mouth "opens wider than the portrait's" beyond this extra lip gap
CHANGE_FULL = 0.06  # face units of lip-gap change at which a sample gets its full sampling weight
MIN_FACE_SHARE = 0.5  # clips with a face in fewer of their frames are skipped


@dataclass(frozen=True)
class TrainOptions:
    """What the user chose (the CLI's flags). None: the preset's value."""

    data: tuple[Path, ...]
    output: Path
    preset: str = "default"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    val_speakers: tuple[str, ...] | None = None
    poses: tuple[Path, ...] = ()  # folders of .pose files (a2p extract-pose output) named after the clips
    resume: Path | None = None
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class Preset:
    """Internal knobs of a training run."""

    model: MouthConfig
    epochs: int
    batch_size: int
    lr: float
    steps_per_epoch: int = 400
    warmup_steps: int = 200
    portraits_per_clip: int = 3  # the first frame, the widest open mouth, a closed mouth
    stride: int = 2  # every stride-th frame is a target
    max_targets: int = 240  # per portrait frame (evenly spread over the clip)
    max_clip_s: float | None = None  # cut clips to this length (tiny preset)
    val_share: float = 0.15  # share of speakers held out when --val-speakers is not given
    speaker_cap: int = 1200  # a speaker with more samples than this is sampled as if it had this many
    speaker_clips: int = 40  # a speaker with more clips than this has only this many prepared (spread by name)
    loss_l1: float = 1.0
    loss_ssim: float = 0.5
    loss_grad: float = 0.5
    loss_adv: float = 0.02  # adversarial patch loss (0: off)
    adv_start: int = 1000  # steps before the adversarial loss starts
    disc_channels: int = 32
    ema_decay: float = 0.998  # validation and export use an exponential moving average of the weights (0: off)
    grad_clip: float = 1.0
    max_val_samples: int = 3000
    colour_jitter: float = 0.06  # std of the random colour matrix around the identity
    grey_share: float = 0.1  # share of samples turned grey (black-and-white portraits)
    swap_share: float = 0.15  # share of samples whose colour channels are permuted (paintings, cartoons)


PRESETS = {
    "tiny": Preset(model=MouthConfig(size=32, channels=(8, 16)), epochs=2, batch_size=4, lr=2e-3,
                   steps_per_epoch=3, warmup_steps=2, portraits_per_clip=1, stride=4, max_targets=6, max_clip_s=1.0,
                   val_share=0.5, adv_start=2, disc_channels=8, ema_decay=0.5, max_val_samples=16),
    # the shipped model's recipe (models/mouth/README.md): 5,568 steps of 64 crops, about 2 minutes on one GPU
    "default": Preset(model=MouthConfig(), epochs=12, batch_size=64, lr=1.5e-3, steps_per_epoch=464, warmup_steps=300,
                      adv_start=1670, loss_adv=0.05, loss_grad=1.0),
}


# --- 1. sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSource:
    video: Path
    speaker: str
    name: str  # for messages and the split: the path relative to its data folder's parent


def find_sources(data: list[Path]) -> list[ClipSource]:
    """Videos under the data folders, sorted by path."""
    speaker_of = _speaker_map(data)
    out = []
    for root in data:
        root = Path(root)
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file()):
            speaker = speaker_of.get(path.name, speaker_of.get(path.stem, path.parent.name))
            out.append(ClipSource(path, speaker, str(path.relative_to(root.parent))))
    return out


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


def _speaker_map(data: list[Path]) -> dict[str, str]:
    """Speakers from a `speakers.tsv` (file name <tab> speaker) in a data folder, when there is one."""
    mapping = {}
    for root in data:
        path = Path(root) / "speakers.tsv"
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] and not line.startswith("#"):
                    mapping[parts[0]] = parts[1]
    return mapping


# --- 2. per-clip samples, cached ----------------------------------------------------------------------


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


def _file_key(path: Path) -> str:
    from a2pcli.cache import sha256_file

    return sha256_file(path)


def cache_path(cache_dir: Path, src: ClipSource, p: Preset) -> Path:
    cfg = p.model
    parts = [f"v{CACHE_VERSION}", _file_key(src.video), f"s{cfg.size}", f"u{cfg.crop_units}", f"g{cfg.region_grow}",
             f"p{p.portraits_per_clip}", f"k{p.stride}", f"n{p.max_targets}", f"max{p.max_clip_s}"]
    return cache_dir / (hashlib.sha256(" ".join(parts).encode()).hexdigest()[:32] + ".npz")


def clip_motion(src: ClipSource, poses: tuple[Path, ...], max_clip_s: float | None):
    """The clip's Motion: a `.pose` named after it in one of the `poses` folders when it was extracted from
    this very file with default options, else MediaPipe on the video now."""
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
        same = (meta.get("source", {}).get("sha256") == _file_key(src.video) and not opts.get("smooth")
                and opts.get("start") is None and opts.get("end") is None and opts.get("fps") is None)
        if same and motion.landmarks is not None and motion.expression is not None:
            if max_clip_s is not None:
                motion = motion.slice(0, int(max_clip_s * motion.fps) + 1)
            return motion
    motion, _ = extract_motion(src.video, ExtractOptions(end=max_clip_s), Reporter())
    return motion


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


def prepare_clip(src: ClipSource, cache_dir: Path, p: Preset, poses: tuple[Path, ...] = ()) -> ClipSamples:
    """The clip's samples, from the cache when it holds them."""
    path = cache_path(cache_dir, src, p)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return ClipSamples(src, z["portraits"], z["portrait_frame"], *(z[k] for k in SAMPLE_ARRAYS))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable: recompute and overwrite
    from a2pcli.outputs import atomic_path

    clip = build_samples(src, p, poses)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, portraits=clip.portraits, portrait_frame=clip.portrait_frame, name=np.array(src.name),
                 **{k: getattr(clip, k) for k in SAMPLE_ARRAYS})
    return clip


def build_samples(src: ClipSource, p: Preset, poses: tuple[Path, ...] = ()) -> ClipSamples:
    """Render the clip's samples (see the module doc, stage 2)."""
    from a2pcli.headpose import canonical, load_reference
    from a2pcli.landmarks import mouth_opening
    from a2pcli.media import decode_size, probe_video, stream_frames

    cfg = p.model
    motion = clip_motion(src, poses, p.max_clip_s)
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
    for k, pf in enumerate(pick_portraits(opening, usable, p.portraits_per_clip, src.name)):
        part = _portrait_samples(frames, motion, usable, pf, p, ref)
        if part is None:
            continue
        part["portrait_of"] = np.full(len(part["warped"]), len(portraits), np.int32)
        portraits.append(part.pop("portrait"))
        portrait_frame.append(pf)
        parts.append(part)
    s = cfg.size
    if not parts:
        empty = {k: np.zeros((0,) + shape, dt) for k, shape, dt in (
            ("warped", (s, s, 3), np.uint8), ("truth", (s, s, 3), np.uint8), ("interior", (s, s), np.uint8),
            ("lips", (2, s, s), np.uint8), ("portrait_of", (), np.int32), ("strength", (), np.float32),
            ("change", (), np.float32), ("target_frame", (), np.int32))}
        return ClipSamples(src, np.zeros((0, s, s, 4), np.uint8), np.zeros(0, np.int32), **empty)
    cat = {k: np.concatenate([q[k] for q in parts]) for k in SAMPLE_ARRAYS}
    return ClipSamples(src, np.stack(portraits), np.array(portrait_frame, np.int32), **cat)


def _portrait_samples(frames: list[np.ndarray], motion, usable: np.ndarray, pf: int, p: Preset, ref) -> dict | None:
    """One portrait frame's samples: its targets retargeted and warped by the renderer."""
    import cv2

    from a2pcli.headpose import canonical
    from a2pcli.render import WarpRenderer, _lip_gap
    from a2pcli.retarget import RetargetOptions, Targets, portrait_face, retarget

    cfg = p.model
    face = portrait_face(motion.landmarks[pf], ref)
    tgt = retarget(face, motion, RetargetOptions(region="all", ref_frame=pf), ref.mean)
    js = np.flatnonzero(usable)
    js = js[(js % p.stride == pf % p.stride) & (js != pf)]
    if len(js) > p.max_targets:
        js = js[np.round(np.linspace(0, len(js) - 1, p.max_targets)).astype(int)]
    if len(js) == 0:
        return None
    sub = Targets(tgt.landmarks[js], tgt.rotation[js], tgt.translation[js], tgt.scale[js])
    renderer = WarpRenderer(frames[pf], face, sub)
    strength = renderer.mouth_strength(sub)
    keep = strength > 0.01
    if not keep.any():
        return None
    js, strength = js[keep], strength[keep]
    sub = Targets(sub.landmarks[keep], sub.rotation[keep], sub.translation[keep], sub.scale[keep])
    crops = renderer.mouth_crops(sub, cfg)
    truth = np.stack([cv2.warpAffine(frames[j], a, (cfg.size, cfg.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE) for j, a in zip(js, crops["affine"])])
    gap = _lip_gap(canonical(sub.landmarks, sub.rotation, sub.translation, sub.scale))
    own = crops["portrait"]
    portrait = np.concatenate([own[:3].transpose(1, 2, 0), own[3:].transpose(1, 2, 0) * 255], 2)
    return {"warped": crops["warped"], "truth": truth, "interior": crops["interior"], "lips": crops["lips"],
            "strength": strength.astype(np.float32), "change": (gap - renderer.portrait_gap).astype(np.float32),
            "target_frame": js.astype(np.int32), "portrait": np.round(portrait).clip(0, 255).astype(np.uint8)}


def prepare_all(sources: list[ClipSource], cache_dir: Path, p: Preset, poses: tuple[Path, ...],
                reporter: Reporter) -> list[ClipSamples]:
    clips = []
    reporter.stage("prepare data (warped mouths, cached)", len(sources))
    for src in sources:
        try:
            clip = prepare_clip(src, cache_dir, p, poses)
            if len(clip):
                clips.append(clip)
            else:
                reporter.warn(f"skipped {src.name}: no frame where the mouth changes")
        except A2PError as exc:
            reporter.warn(f"skipped {src.name}: {exc.one_line()}")
        reporter.advance()
    return clips


# --- 3. the data set: split, sampling weights, batches ---------------------------------------------------


@dataclass
class DataSet:
    """Samples of several clips, concatenated. Portraits are indexed globally."""

    portraits: np.ndarray  # (P, S, S, 4) uint8
    warped: np.ndarray
    truth: np.ndarray
    interior: np.ndarray
    lips: np.ndarray
    portrait_of: np.ndarray  # (N,) global portrait index
    strength: np.ndarray
    change: np.ndarray
    speaker: np.ndarray  # (N,) int32 speaker index
    clip: np.ndarray  # (N,) int32 clip index

    def __len__(self) -> int:
        return len(self.warped)


def join(clips: list[ClipSamples], idx: list[int], speakers: list[str]) -> DataSet:
    parts = [clips[i] for i in idx]
    offsets = np.cumsum([0] + [len(c.portraits) for c in parts])
    spk = {s: k for k, s in enumerate(speakers)}
    return DataSet(
        portraits=np.concatenate([c.portraits for c in parts]),
        **{k: np.concatenate([getattr(c, k) for c in parts]) for k in ("warped", "truth", "interior", "lips",
                                                                      "strength", "change")},
        portrait_of=np.concatenate([c.portrait_of + o for c, o in zip(parts, offsets)]).astype(np.int32),
        speaker=np.concatenate([np.full(len(c), spk[c.source.speaker], np.int32) for c in parts]),
        clip=np.concatenate([np.full(len(c), i, np.int32) for i, c in zip(idx, parts)]),
    )


def split_speakers(clips: list[ClipSamples], val_speakers: tuple[str, ...] | None, share: float,
                   seed: int) -> tuple[list[int], list[int]]:
    speakers = sorted({c.source.speaker for c in clips})
    if val_speakers is not None:
        unknown = sorted(set(val_speakers) - set(speakers))
        if unknown:
            raise InputError(f"no clip has speaker(s) {', '.join(unknown)}", subject="--val-speakers",
                             remedy=f"speakers are folder names (or a speakers.tsv); found: {', '.join(speakers[:20])}")
        val = set(val_speakers)
    else:
        rng = np.random.default_rng(seed)
        n_val = max(1, int(round(share * len(speakers)))) if len(speakers) > 1 else 0
        val = set(rng.permutation(speakers)[:n_val].tolist())
    train_idx = [i for i, c in enumerate(clips) if c.source.speaker not in val]
    val_idx = [i for i, c in enumerate(clips) if c.source.speaker in val]
    if not train_idx:
        raise InputError("every speaker is held out for validation; nothing is left to train on",
                         subject="--val-speakers", remedy="hold out fewer speakers")
    return train_idx, val_idx


def sampling_weights(ds: DataSet, cap: int) -> np.ndarray:
    """(N,) probabilities: more weight where the lip gap changes more, speakers with many samples capped."""
    w = (0.25 + np.clip(np.abs(ds.change) / CHANGE_FULL, 0.0, 1.0)) * ds.strength
    counts = np.bincount(ds.speaker)
    w = w * np.minimum(1.0, cap / np.maximum(counts[ds.speaker], 1))
    return w / w.sum()


def to_device(ds: DataSet, device: str) -> DataSet:
    """The data set's arrays as torch tensors on `device` (a GPU holds the whole set; batches are gathered there)."""
    import torch

    return DataSet(**{k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in ds.__dict__.items()})


def batch_tensors(ds: DataSet, idx, device: str) -> dict:
    """The samples `idx` as float tensors on `device`: warped, truth (B, 3, S, S) 0..255, lips (B, 2, S, S),
    interior (B, 1, S, S), portrait (B, 4, S, S) (RGB 0..255, mask 0..1), strength (B,). `ds` holds NumPy
    arrays (idx: NumPy) or tensors (idx: a tensor on their device)."""
    import torch

    def t(a):
        return (torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a).to(device).float()

    own = ds.portraits[ds.portrait_of[idx]]
    return {"warped": t(ds.warped[idx]).permute(0, 3, 1, 2), "truth": t(ds.truth[idx]).permute(0, 3, 1, 2),
            "lips": t(ds.lips[idx]) / 255, "interior": t(ds.interior[idx])[:, None] / 255,
            "portrait": torch.cat([t(own[..., :3]), t(own[..., 3:]) / 255], -1).permute(0, 3, 1, 2),
            "strength": t(ds.strength[idx])}


def augment(b: dict, gen, p: Preset) -> dict:
    """Flips and one colour change per sample, applied to portrait, warp and truth alike."""
    import torch

    n = b["warped"].shape[0]
    dev = b["warped"].device
    flip = torch.rand(n, generator=gen) < 0.5
    if flip.any():
        f = flip.to(dev)
        for k in ("warped", "truth", "lips", "interior", "portrait"):
            b[k] = torch.where(f.view(-1, 1, 1, 1), b[k].flip(-1), b[k])
    m = torch.eye(3).expand(n, 3, 3) + p.colour_jitter * torch.randn(n, 3, 3, generator=gen)
    swap = torch.rand(n, generator=gen) < p.swap_share
    for i in torch.nonzero(swap).flatten().tolist():
        m[i] = m[i][torch.randperm(3, generator=gen)]
    grey = torch.rand(n, generator=gen) < p.grey_share
    luma = torch.tensor([0.299, 0.587, 0.114]).expand(3, 3)
    m = torch.where(grey.view(-1, 1, 1), luma.expand(n, 3, 3), m)
    gain = 0.75 + 0.5 * torch.rand(n, 1, 1, generator=gen)
    shift = 20.0 * torch.randn(n, 3, 1, generator=gen)
    m, shift = (m * gain).to(dev), shift.to(dev)

    def colour(x):
        s = x.shape
        return (m @ x.reshape(s[0], 3, -1) + shift).clamp(0, 255).reshape(s)

    b["warped"], b["truth"] = colour(b["warped"]), colour(b["truth"])
    b["portrait"] = torch.cat([colour(b["portrait"][:, :3]), b["portrait"][:, 3:]], 1)
    return b


# --- 4. losses and metrics -----------------------------------------------------------------------------


def luma(x):
    """(B, 3, H, W) -> (B, 1, H, W) BT.601 luma."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def ssim_map(x, y, data_range: float = 255.0):
    """(B, 1, H, W) SSIM map of two luma images (Gaussian window 11, sigma 1.5, the standard constants)."""
    import torch
    from torch.nn import functional as F

    r, sigma = 5, 1.5
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    g = g / g.sum()

    def blur(a):
        a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(a, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def gradients(x):
    """Horizontal and vertical differences, (B, C, H, W-1) and (B, C, H-1, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def laplacian_var(x) -> np.ndarray:
    """(B, 1, H, W) luma -> (B,) variance of its 4-neighbour Laplacian (sharpness)."""
    lap = x[..., 1:-1, 2:] + x[..., 1:-1, :-2] + x[..., 2:, 1:-1] + x[..., :-2, 1:-1] - 4 * x[..., 1:-1, 1:-1]
    return lap.flatten(1).var(1).cpu().numpy()


def build_discriminator(channels: int):
    """A patch discriminator: (B, 3 + 2, S, S) crop and target lip masks -> (B, 1, S/4, S/4) logits."""
    from torch import nn

    c = channels

    def block(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1), nn.LeakyReLU(0.2, inplace=True)]

    return nn.Sequential(*block(5, c, 1), *block(c, c, 2), *block(c, 2 * c, 2), *block(2 * c, 2 * c, 1),
                         nn.Conv2d(2 * c, 1, 3, 1, 1))


def composite(net, b: dict, cfg: MouthConfig):
    """The model's crops (B, 3, S, S) 0..255 and its painted region (B, 1, S, S) for batch `b`."""
    from a2pcli.mouthnet import assemble, paint_region

    region = paint_region(b["lips"], b["interior"], cfg) * b["strength"].view(-1, 1, 1, 1)
    delta = net(assemble(b["warped"], b["lips"], b["interior"], b["portrait"])) * 255.0
    return b["warped"] + region * delta, region


def image_losses(out, truth, region) -> dict:
    """L1, 1 - SSIM and gradient L1, each inside the painted region (0..1 units)."""
    wsum = region.sum().clamp(min=1.0)
    d = (out - truth) / 255.0
    l1 = (d.abs().mean(1, keepdim=True) * region).sum() / wsum
    ssim = ((1 - ssim_map(luma(out), luma(truth))) * region).sum() / wsum
    (ox, oy), (tx, ty) = gradients(out / 255.0), gradients(truth / 255.0)
    grad = (((ox - tx).abs().mean(1, keepdim=True) * region[..., :, 1:]).sum()
            + ((oy - ty).abs().mean(1, keepdim=True) * region[..., 1:, :]).sum()) / (2 * wsum)
    return {"l1": l1, "ssim": ssim, "grad": grad}


# --- 5. the run ----------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a checkpoint holds besides the tensors."""

    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class _Context:
    clips: list[ClipSamples]
    train_idx: list[int]
    val_idx: list[int]
    train: DataSet
    val: DataSet | None
    val_pick: np.ndarray  # samples of `val` used for validation
    prob: np.ndarray
    p: Preset
    opts: TrainOptions
    device: str
    out: Path
    ema: object


def resolve_preset(opts: TrainOptions) -> Preset:
    p = PRESETS[opts.preset]
    return replace(p, epochs=opts.epochs or p.epochs, batch_size=opts.batch_size or p.batch_size,
                   lr=opts.lr if opts.lr is not None else p.lr)


def find_checkpoint(resume: Path | None) -> Path | None:
    if resume is None:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST_CHECKPOINT if (path / CHECKPOINT_DIR).is_dir() else path / LAST_CHECKPOINT
    if not path.is_file():
        raise InputError("no checkpoint there", subject=str(path), remedy="give a checkpoint file or a model folder "
                         f"with {CHECKPOINT_DIR}/{LAST_CHECKPOINT}")
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, read without unpickling arbitrary objects (torch.load weights_only=True)."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"not a readable mouth-model checkpoint ({str(exc)[:120]})", subject=str(path),
                         remedy="give a checkpoint written by `a2p train mouth`") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != "a2p.mouth.checkpoint":
        raise InputError("not a mouth-model checkpoint", subject=str(path),
                         remedy="give a checkpoint written by `a2p train mouth`")
    return ckpt


def _derive(seed: int, *parts) -> int:
    return zlib.crc32(" ".join(map(str, (seed, *parts))).encode())


def _lr_at(step: int, total: int, p: Preset) -> float:
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    frac = (step - p.warmup_steps) / max(1, total - p.warmup_steps)
    return p.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(opts: TrainOptions, reporter: Reporter | None = None) -> dict:
    """Prepare the data, train, validate, checkpoint and export. Returns the summary."""
    from a2pcli.device import JobEstimate, preflight

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    p = resolve_preset(opts)
    ckpt_path = find_checkpoint(opts.resume)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        p = replace(_preset_from_dict(ckpt["preset"]), epochs=p.epochs)
    choice = preflight(opts.device, JobEstimate("training the mouth model", vram_bytes=1 << 30))
    device = choice.device
    reporter.info(f"device: {choice.device} ({choice.name}); preset {opts.preset}, {p.epochs} epochs of "
                  f"{p.steps_per_epoch} steps, batch {p.batch_size}, lr {p.lr:g}")
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is None and (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run: the log starts again

    sources = limit_per_speaker(find_sources(list(opts.data)), p.speaker_clips)
    if not sources:
        raise InputError("no videos found", subject=", ".join(map(str, opts.data)),
                         remedy=f"put talking videos ({', '.join(VIDEO_EXTS)}) in the folder")
    clips = prepare_all(sources, out / "cache", p, tuple(opts.poses), reporter)
    if len(clips) < 2:
        raise InputError(f"only {len(clips)} usable clip(s)", subject=", ".join(map(str, opts.data)),
                         remedy="training needs talking videos of at least two speakers (one is held out)")
    return fit(clips, opts, p, ckpt, choice, reporter, t0)


def fit(clips: list[ClipSamples], opts: TrainOptions, p: Preset, ckpt: dict | None, choice, reporter: Reporter,
        t0: float) -> dict:
    """Stages 3 to 5 on prepared clips: split, train, validate, checkpoint, export. Returns the summary."""
    import torch

    from a2pcli.mouthnet import build_network

    device, out = choice.device, Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is not None:
        train_idx, val_idx = _split_from_checkpoint(ckpt, clips)
    else:
        train_idx, val_idx = split_speakers(clips, opts.val_speakers, p.val_share, opts.seed)
    ctx = _make_context(clips, train_idx, val_idx, p, opts, device, out)
    reporter.info(_data_line(ctx))

    torch.manual_seed(opts.seed)
    net = build_network(p.model).to(device)
    disc = build_discriminator(p.disc_channels).to(device)
    ctx.ema = _make_ema(net, p)
    optim = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=0.0, betas=(0.9, 0.99))
    optim_d = torch.optim.AdamW(disc.parameters(), lr=p.lr, weight_decay=0.0, betas=(0.5, 0.99))
    state = RunState()
    if ckpt is not None:
        net.load_state_dict(ckpt["model"], strict=True)
        if ctx.ema is not net:
            ctx.ema.load_state_dict(ckpt["ema"], strict=True)
        disc.load_state_dict(ckpt["disc"], strict=True)
        optim.load_state_dict(ckpt["optimizer"])
        optim_d.load_state_dict(ckpt["optimizer_disc"])
        state = RunState(int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"]))
        reporter.info(f"resumed from {opts.resume} after epoch {state.epoch} (step {state.step})")
    total = p.steps_per_epoch * p.epochs
    reporter.stage("train", total)
    reporter.advance(state.step)
    for epoch in range(state.epoch + 1, p.epochs + 1):
        row = train_epoch(ctx, net, disc, optim, optim_d, epoch, total, state, reporter)
        row.update(validate(ctx, ctx.ema))
        state.history.append(row)
        state.epoch = epoch
        _append_log(out, row)
        save_checkpoint(out, net, disc, optim, optim_d, state, ctx)
        reporter.info(_epoch_line(row, p.epochs))
    export(ctx, state)
    return _summary(ctx, state, t0, choice, net)


def _make_context(clips, train_idx, val_idx, p: Preset, opts: TrainOptions, device: str, out: Path) -> _Context:
    speakers = sorted({c.source.speaker for c in clips})
    train = join(clips, train_idx, speakers)
    val = join(clips, val_idx, speakers) if val_idx else None
    prob = sampling_weights(train, p.speaker_cap)
    if device != "cpu":
        train = to_device(train, device)
    val_pick = np.zeros(0, np.int64)
    if val is not None:
        rng = np.random.default_rng(_derive(opts.seed, "val"))
        val_pick = np.sort(rng.permutation(len(val))[: p.max_val_samples])
    return _Context(clips, train_idx, val_idx, train, val, val_pick, prob, p, opts, device, out, None)


def _make_ema(net, p: Preset):
    import copy

    if not p.ema_decay:
        return net
    ema = copy.deepcopy(net)
    for q in ema.parameters():
        q.requires_grad_(False)
    return ema


def _update_ema(ema, net, decay: float, step: int) -> None:
    import torch

    if ema is net:
        return
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, q in zip(ema.parameters(), net.parameters()):
            e.mul_(d).add_(q.detach(), alpha=1 - d)


def train_epoch(ctx: _Context, net, disc, optim, optim_d, epoch: int, total: int, state: RunState,
                reporter: Reporter) -> dict:
    import torch

    p, cfg = ctx.p, ctx.p.model
    rng = np.random.default_rng(_derive(ctx.opts.seed, "epoch", epoch))
    gen = torch.Generator().manual_seed(_derive(ctx.opts.seed, "torch", epoch))
    net.train()
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in range(p.steps_per_epoch):
        idx = rng.choice(len(ctx.train), size=p.batch_size, p=ctx.prob)
        if not isinstance(ctx.train.warped, np.ndarray):
            idx = torch.from_numpy(idx).to(ctx.device)
        b = augment(batch_tensors(ctx.train, idx, ctx.device), gen, p)
        lr = _lr_at(state.step, total, p)
        for o in (optim, optim_d):
            for group in o.param_groups:
                group["lr"] = lr
        out, region = composite(net, b, cfg)
        adv = p.loss_adv > 0 and state.step >= p.adv_start
        parts = {}
        if adv:  # the discriminator: real mouths (the truth in the painted region) against the model's
            real = b["warped"] + region * (b["truth"] - b["warped"])
            d_real = disc(torch.cat([real / 127.5 - 1, b["lips"]], 1))
            d_fake = disc(torch.cat([out.detach() / 127.5 - 1, b["lips"]], 1))
            loss_d = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
            optim_d.zero_grad(set_to_none=True)
            loss_d.backward()
            optim_d.step()
            parts["disc"] = loss_d.detach()
        losses = image_losses(out, b["truth"], region)
        loss = p.loss_l1 * losses["l1"] + p.loss_ssim * losses["ssim"] + p.loss_grad * losses["grad"]
        if adv:
            g_adv = -disc(torch.cat([out / 127.5 - 1, b["lips"]], 1)).mean()
            loss = loss + p.loss_adv * g_adv
            parts["adv"] = g_adv.detach()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
        optim.step()
        state.step += 1
        _update_ema(ctx.ema, net, p.ema_decay, state.step)
        for k, v in {"loss": loss.detach(), **losses, **parts}.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        reporter.advance()
    n = p.steps_per_epoch
    row = {"epoch": epoch, "step": state.step, "lr": round(_lr_at(state.step - 1, total, p), 6)}
    row.update({f"train_{k}": round(v / n, 5) for k, v in sums.items()})
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def validate(ctx: _Context, net, batch: int = 64) -> dict:
    """Crop metrics on the held-out speakers' samples whose real mouth opens wider than the portrait's:
    SSIM (luma) and PSNR (RGB) of the model's crop and of the warp alone against the real crop, and the
    sharpness (Laplacian variance) of the model's crops over the real ones'."""
    import torch

    if ctx.val is None or not len(ctx.val_pick):
        return {}
    pick = ctx.val_pick[ctx.val.change[ctx.val_pick] > OPEN_MARGIN]
    if not len(pick):
        return {}
    net.eval()
    rows: dict[str, list] = {"ssim": [], "psnr": [], "ssim_warp": [], "psnr_warp": [], "lap": [], "lap_real": []}
    with torch.no_grad():
        for a in range(0, len(pick), batch):
            b = batch_tensors(ctx.val, pick[a : a + batch], ctx.device)
            out, _ = composite(net, b, ctx.p.model)
            out = out.clamp(0, 255).round()
            for key, img in (("", out), ("_warp", b["warped"])):
                rows["ssim" + key] += ssim_map(luma(img), luma(b["truth"])).flatten(1).mean(1).tolist()
                mse = ((img - b["truth"]) ** 2).flatten(1).mean(1).clamp(min=1e-6)
                rows["psnr" + key] += (10 * torch.log10(255.0**2 / mse)).tolist()
            rows["lap"] += laplacian_var(luma(out)).tolist()
            rows["lap_real"] += laplacian_var(luma(b["truth"])).tolist()
    net.train()
    lap = float(np.mean(rows["lap"]) / max(np.mean(rows["lap_real"]), 1e-9))
    return {"val_samples": len(pick), "val_ssim": round(float(np.mean(rows["ssim"])), 4),
            "val_psnr": round(float(np.mean(rows["psnr"])), 3),
            "val_ssim_warp": round(float(np.mean(rows["ssim_warp"])), 4),
            "val_psnr_warp": round(float(np.mean(rows["psnr_warp"])), 3), "val_sharpness": round(lap, 3)}


def save_checkpoint(out: Path, net, disc, optim, optim_d, state: RunState, ctx: _Context) -> Path:
    import torch

    from a2pcli.outputs import atomic_path

    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data = {"format": "a2p.mouth.checkpoint", "model": net.state_dict(), "ema": ctx.ema.state_dict(),
            "disc": disc.state_dict(), "optimizer": optim.state_dict(), "optimizer_disc": optim_d.state_dict(),
            "epoch": state.epoch, "step": state.step, "history": state.history, "preset": _preset_dict(ctx.p),
            "options": _options_dict(ctx.opts),
            "split": {"train": [ctx.clips[i].source.name for i in ctx.train_idx],
                      "val": [ctx.clips[i].source.name for i in ctx.val_idx]}}
    path = folder / LAST_CHECKPOINT
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(data, tmp)
    return path


def _preset_dict(p: Preset) -> dict:
    d = asdict(p)
    d["model"] = asdict(p.model)
    d["model"]["channels"] = list(p.model.channels)
    return d


def _preset_from_dict(d: dict) -> Preset:
    d = dict(d)
    d["model"] = MouthConfig.from_dict(d["model"])
    return Preset(**d)


def _options_dict(opts: TrainOptions) -> dict:
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in asdict(opts).items()}


def _split_from_checkpoint(ckpt: dict, clips: list[ClipSamples]) -> tuple[list[int], list[int]]:
    names = {c.source.name: i for i, c in enumerate(clips)}
    missing = [n for n in ckpt["split"]["train"] + ckpt["split"]["val"] if n not in names]
    if missing:
        raise InputError(f"the checkpoint was trained on clips that are not in --data now ({missing[0]}, ...)",
                         subject="--resume", remedy="resume with the same --data folders")
    return [names[n] for n in ckpt["split"]["train"]], [names[n] for n in ckpt["split"]["val"]]


def export(ctx: _Context, state: RunState) -> None:
    """Write config.json + model.safetensors (the averaged weights) into the output folder."""
    from a2pcli.mouthnet import save_model

    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "a2p_version": _version(),
        "options": _options_dict(ctx.opts),
        "preset": _preset_dict(ctx.p),
        "data": _data_summary(ctx),
        "epochs": state.epoch,
        "steps": state.step,
        "validation": {k: v for k, v in (state.history[-1] if state.history else {}).items() if k.startswith("val_")},
    }
    save_model(ctx.out, ctx.p.model, ctx.ema.state_dict(), meta)


def _version() -> str:
    from a2pcli import __version__

    return __version__


def _data_summary(ctx: _Context) -> dict:
    def part(idx, ds):
        spk = sorted({ctx.clips[i].source.speaker for i in idx})
        return {"clips": len(idx), "speakers": len(spk), "samples": 0 if ds is None else len(ds),
                "portraits": 0 if ds is None else len(ds.portraits), "speaker_names": spk}

    return {"train": part(ctx.train_idx, ctx.train), "val": part(ctx.val_idx, ctx.val),
            "data_folders": [str(d) for d in ctx.opts.data]}


def _data_line(ctx: _Context) -> str:
    d = _data_summary(ctx)
    return (f"data: train {d['train']['clips']} clips / {d['train']['speakers']} speakers / {d['train']['samples']} "
            f"samples, val {d['val']['clips']} clips / {d['val']['speakers']} speakers / {d['val']['samples']} samples")


def _epoch_line(row: dict, epochs: int) -> str:
    s = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} (L1 {row['train_l1']:.4f})"
    if "val_ssim" in row:
        s += (f"; val SSIM {row['val_ssim']:.3f} (warp {row['val_ssim_warp']:.3f}), PSNR {row['val_psnr']:.2f} dB "
              f"(warp {row['val_psnr_warp']:.2f}), sharpness x{row['val_sharpness']}")
    return s + f"; {row['seconds']:.0f} s"


def _append_log(out: Path, row: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def _summary(ctx: _Context, state: RunState, t0: float, choice, net) -> dict:
    last = state.history[-1] if state.history else {}
    return {
        "output": str(ctx.out),
        "files": [str(ctx.out / "config.json"), str(ctx.out / "model.safetensors")],
        "checkpoint": str(ctx.out / CHECKPOINT_DIR / LAST_CHECKPOINT),
        "device": choice.device,
        "epochs": state.epoch,
        "steps": state.step,
        "data": _data_summary(ctx),
        "train_loss": last.get("train_loss"),
        "validation": {k: v for k, v in last.items() if k.startswith("val_")},
        "parameters": int(sum(q.numel() for q in net.parameters())),
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }


def output_check(output: Path) -> None:
    """Fail early when the model folder cannot be written."""
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
        probe = Path(output) / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write the model folder ({exc.strerror})", subject=str(output),
                          remedy="choose another -o") from exc
