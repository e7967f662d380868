"""Training batches: each epoch's augmented speech inputs of the clips in use, and random crops of the pose
stretches (time-stretched, mirrored) with the speech under them. Every random draw comes from the generator
passed in (seeded by the run's seed and the epoch)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from a2pcli import features
from a2pcli.audio2pose import INPUT_STRIDE, N_POSE, POSE_RATE, SILENT_INPUT
from a2pcli.train.audio2motion.batches import augment_logmel, warp_mels
from a2pcli.train.audio2pose.data import PoseClip
from a2pcli.train.audio2pose.presets import PosePreset
from a2pcli.train.audio2pose.targets import Segment

MARGIN_FRAMES = 8  # pose frames of speech context beyond each crop edge (the encoder's reach)


def clip_inputs(clip: PoseClip, rng: np.random.Generator | None, p: PosePreset | None) -> np.ndarray:
    """(T100, N_INPUT) network inputs of a clip: normalised log-mel (augmented when rng is given) + prosody."""
    logmel = clip.logmel
    mels = features.normalise(augment_logmel(logmel, rng, p) if rng is not None else logmel)
    if rng is not None:
        mels = warp_mels(mels, rng.uniform(1 - p.warp, 1 + p.warp))
    return np.concatenate([mels, clip.prosody[: len(mels)]], axis=1).astype(np.float32)


def _interp_rows(a: np.ndarray, pos: np.ndarray) -> np.ndarray:
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(a) - 1)
    i1 = np.minimum(i0 + 1, len(a) - 1)
    w = np.clip(pos - np.floor(pos), 0, 1).astype(np.float32)[:, None]
    return a[i0] * (1 - w) + a[i1] * w


def make_batch(segs: list[Segment], inputs: dict[int, np.ndarray], pick: np.ndarray, rng: np.random.Generator,
               p: PosePreset, std: np.ndarray):
    """-> speech (B, N_INPUT, 4 (L + 2 M)), target (B, N_POSE, L) normalised, mask (B, L); L = crop frames,
    M = MARGIN_FRAMES. A segment shorter than the crop is placed at a random offset, the rest masked."""
    n = int(round(p.crop_s * POSE_RATE))
    m = MARGIN_FRAMES
    n_in = INPUT_STRIDE * (n + 2 * m)
    x = np.repeat(SILENT_INPUT[None, None], len(pick), 0).repeat(n_in, 1)
    y = np.zeros((len(pick), n, N_POSE), np.float32)
    mask = np.zeros((len(pick), n), np.float32)
    for b, si in enumerate(pick):
        s = segs[si]
        feats = inputs[s.clip]
        rate = rng.uniform(1 - p.stretch, 1 + p.stretch)
        span = (n - 1) * rate
        L = len(s.target)
        start = rng.uniform(0, L - 1 - span) if L - 1 > span else -rng.uniform(0, span - (L - 1))
        pos = start + np.arange(n) * rate  # in segment frames
        inside = (pos >= 0) & (pos <= L - 1)
        y[b] = _interp_rows(s.target, np.clip(pos, 0, L - 1))
        mask[b] = inside
        # the speech under the crop, with margins, at 4x the pose rate, time-stretched alike
        fpos = INPUT_STRIDE * (s.start + start - m * rate) + np.arange(n_in) * rate
        ok = (fpos >= 0) & (fpos <= len(feats) - 1)
        if ok.any():
            x[b, ok] = _interp_rows(feats, fpos[ok])
        if rng.random() < p.mirror:  # left-right mirror: yaw, roll and x change sign
            y[b][:, [0, 2, 3]] *= -1
    y = y / std[None, None]
    return x.transpose(0, 2, 1).copy(), y.transpose(0, 2, 1).copy(), mask


def epoch_batches(clips: list[PoseClip], segs: list[Segment], weights: np.ndarray, rng: np.random.Generator,
                  p: PosePreset, batch: int, std: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless batches of `batch` crops of `segs`, drawn by `weights` (summing to 1); the clips' inputs are
    augmented once for the epoch, on the first batch."""
    used = sorted({s.clip for s in segs})
    inputs = {i: clip_inputs(clips[i], rng, p) for i in used}
    while True:
        pick = rng.choice(len(segs), size=batch, p=weights)
        yield make_batch(segs, inputs, pick, rng, p, std)
