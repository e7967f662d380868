"""What audio2pose learns from: each clip's pose resampled to POSE_RATE, cut where the face was lost or the
pose jumps (a cut, a detection swap), smoothed by MEASURE_SMOOTH_S (landmark jitter) and taken relative to
each stretch's mean; the speaker split, and sampling weights that cap each speaker's share (GRID, one
speaker with much footage, counts as one speaker)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from a2pcli import features
from a2pcli.audio2pose import N_POSE, POSE_RATE, gaussian_smooth
from a2pcli.train.audio2pose.data import PoseClip
from a2pcli.train.clips import split_speakers

MEASURE_SMOOTH_S = 0.06  # Gaussian sigma: MediaPipe's frame-to-frame jitter is removed, head motion kept
JUMP_DEG = 12.0  # a rotation change this large between two source frames is a cut or a detection swap
JUMP_SHIFT = 0.25  # face units: likewise for the translation
MIN_SEGMENT_S = 1.5  # shorter stretches of usable pose are not used
MAX_SEGMENT_STD = (20.0, 15.0, 15.0, 0.6, 0.6)  # a segment spreading wider than this is not a head talking


@dataclass
class Segment:
    clip: int  # index into the clip list
    start: int  # first pose frame (at POSE_RATE) in the clip
    target: np.ndarray  # (L, N_POSE) smoothed pose minus its mean (degrees, face units)


def resample_clip(clip: PoseClip) -> tuple[np.ndarray, np.ndarray]:
    """The clip's pose at POSE_RATE -> (T25, N_POSE) and usable (T25,) bool (both neighbours valid, no jump)."""
    n = int(math.floor(min(len(clip.pose) / clip.fps, len(clip.logmel) / features.FRAME_RATE) * POSE_RATE))
    if n < 2 or len(clip.pose) < 2:
        return np.zeros((0, N_POSE), np.float32), np.zeros(0, bool)
    step = np.abs(np.diff(clip.pose, axis=0))
    jump = (step[:, :3].max(1) > JUMP_DEG) | (step[:, 3:].max(1) > JUMP_SHIFT)  # between frames k and k+1
    ok_pair = clip.valid[:-1] & clip.valid[1:] & ~jump
    pos = np.clip(np.arange(n) / POSE_RATE * clip.fps, 0, len(clip.pose) - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), len(clip.pose) - 2)
    w = (pos - i0)[:, None]
    pose = ((1 - w) * clip.pose[i0] + w * clip.pose[i0 + 1]).astype(np.float32)
    return pose, ok_pair[i0]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of True in `mask`."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def clip_segments(clip: PoseClip, index: int) -> list[Segment]:
    """The clip's stretches of usable pose, each smoothed and relative to its own mean."""
    pose, usable = resample_clip(clip)
    out = []
    for a, b in runs(usable):
        if b - a < MIN_SEGMENT_S * POSE_RATE:
            continue
        seg = gaussian_smooth(pose[a:b], MEASURE_SMOOTH_S * POSE_RATE)
        seg = seg - seg.mean(0)
        if (seg.std(0) > np.asarray(MAX_SEGMENT_STD)).any():
            continue
        out.append(Segment(index, a, seg.astype(np.float32)))
    return out


def all_segments(clips: list[PoseClip], idx: list[int]) -> list[Segment]:
    return [s for i in idx for s in clip_segments(clips[i], i)]


def split(clips: list[PoseClip], val_speakers, share: float, seed: int) -> tuple[list[int], list[int]]:
    """Clip indices for training and validation, split by speaker (a2pcli.train.clips.split_speakers)."""
    return split_speakers([SimpleNamespace(source=SimpleNamespace(speaker=c.speaker)) for c in clips],
                          val_speakers, share, seed)


def split_from_names(names: dict, clips: list[PoseClip]) -> tuple[list[int], list[int]]:
    """A checkpoint's split ({"train": [clip names], "val": [...]}) as indices into `clips`."""
    from a2pcli.errors import InputError

    index = {c.name: i for i, c in enumerate(clips)}
    missing = [n for n in list(names["train"]) + list(names["val"]) if n not in index]
    if missing:
        raise InputError(f"the checkpoint was trained on clips that are not in --data now ({missing[0]}, ...)",
                         subject="--resume", remedy="resume with the same --data folders")
    return [index[n] for n in names["train"]], [index[n] for n in names["val"]]


def segment_weights(clips: list[PoseClip], segs: list[Segment], cap_s: float) -> np.ndarray:
    """(S,) sampling probability of each segment: its seconds, scaled down for speakers with more than cap_s."""
    per_spk: dict[str, float] = {}
    for s in segs:
        spk = clips[s.clip].speaker
        per_spk[spk] = per_spk.get(spk, 0.0) + len(s.target) / POSE_RATE
    w = np.array([len(s.target) / POSE_RATE * min(1.0, cap_s / per_spk[clips[s.clip].speaker]) for s in segs])
    return w / max(w.sum(), 1e-12)


def effective_seconds(clips: list[PoseClip], segs: list[Segment], cap_s: float) -> float:
    per_spk: dict[str, float] = {}
    for s in segs:
        per_spk[clips[s.clip].speaker] = per_spk.get(clips[s.clip].speaker, 0.0) + len(s.target) / POSE_RATE
    return float(sum(min(v, cap_s) for v in per_spk.values()))


def pose_std(segs: list[Segment]) -> tuple[float, ...]:
    """Per-channel standard deviation of the targets (the model's normalisation)."""
    x = np.concatenate([s.target for s in segs]).astype(np.float64)
    return tuple(round(float(v), 5) for v in np.maximum(x.std(0), 1e-4))
