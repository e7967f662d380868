"""What audio2motion learns to predict: per speaker, the CLOSED-mouth neutral (the mean expression over the
frames with the smallest mouth opening); deltas = expression - neutral on the lower-face region; a linear
basis (uncentred PCA) of the training speakers' deltas; every clip's codes and lip gap resampled to 50 Hz."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from a2pcli.audio2motion import CODE_RATE, n_codes_for, region_weights
from a2pcli.landmarks import LOWER_LIP_INNER, UPPER_LIP_INNER

from a2pcli.train.audio2motion.data import ClipData

NEUTRAL_PERCENTILE = 10.0  # a speaker's closed-mouth neutral: mean of its frames at or below this opening percentile


@dataclass
class Targets:
    region: np.ndarray  # (R,) landmark indices
    weights: np.ndarray  # (R,) region weights
    basis: np.ndarray  # (K, R, 3)
    neutrals: dict[str, np.ndarray]  # speaker -> (478, 3) closed-mouth expression
    explained: float  # share of the training deltas' energy the basis keeps


def speaker_neutrals(clips: list[ClipData]) -> dict[str, np.ndarray]:
    """speaker -> (478, 3) mean expression over its valid frames with the smallest mouth opening."""
    by_spk: dict[str, list[ClipData]] = {}
    for c in clips:
        by_spk.setdefault(c.source.speaker, []).append(c)
    out = {}
    for spk, cs in by_spk.items():
        opening = np.concatenate([c.opening[c.valid] for c in cs])
        if len(opening) == 0:
            continue
        thr = np.percentile(opening, NEUTRAL_PERCENTILE)
        closed = [c.expression[c.valid & (c.opening <= thr)] for c in cs]
        out[spk] = np.concatenate(closed).mean(0).astype(np.float32)
    return out


def region_deltas(clip: ClipData, neutral: np.ndarray, region: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(T, R, 3) weighted lower-face displacement from the speaker's closed neutral."""
    return (clip.expression[:, region] - neutral[region]) * weights[None, :, None]


def fit_basis(clips: list[ClipData], neutrals: dict, region: np.ndarray, weights: np.ndarray, k: int,
              clip_weight: dict[int, float]) -> tuple[np.ndarray, float]:
    """Uncentred PCA (SVD) of the training deltas, each clip weighted -> (K, R, 3), explained share."""
    rows = []
    for i, c in enumerate(clips):
        d = region_deltas(c, neutrals[c.source.speaker], region, weights)[c.valid]
        if len(d):
            per_frame = math.sqrt(clip_weight.get(i, 1.0) / len(d))
            rows.append(d.reshape(len(d), -1) * per_frame)
    x = np.concatenate(rows).astype(np.float64)
    gram = x.T @ x
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    basis = vecs[:, :k].T
    basis *= np.where(basis.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign per component
    return basis.reshape(k, len(region), 3).astype(np.float32), float(vals[:k].sum() / max(vals.sum(), 1e-12))


def gap_index(region: np.ndarray) -> tuple[int, int]:
    """Positions of the upper and lower inner-lip landmarks in the region."""
    pos = {int(r): i for i, r in enumerate(region)}
    return pos[UPPER_LIP_INNER], pos[LOWER_LIP_INNER]


def gap_direction(tg: Targets) -> np.ndarray:
    """(K,) lip gap per unit code."""
    iu, il = gap_index(tg.region)
    return (tg.basis[:, il, 1] - tg.basis[:, iu, 1]).astype(np.float32)


def clip_targets(clip: ClipData, tg: Targets) -> None:
    """Fill clip.codes/gap/mask: the clip's codes and lip gap at the 50 Hz code times."""
    d = region_deltas(clip, tg.neutrals[clip.source.speaker], tg.region, tg.weights)
    codes = np.einsum("trc,krc->tk", d, tg.basis)
    iu, il = gap_index(tg.region)
    gap = d[:, il, 1] - d[:, iu, 1]
    n50 = n_codes_for(len(clip.logmel))
    pos = np.arange(n50) / CODE_RATE * clip.fps  # code m's position in video frames
    i0 = np.floor(pos).astype(np.int64)
    inside = (pos <= len(d) - 1)
    i0 = np.clip(i0, 0, len(d) - 1)
    i1 = np.minimum(i0 + 1, len(d) - 1)
    w = (pos - i0).clip(0, 1)
    clip.codes = ((1 - w)[:, None] * codes[i0] + w[:, None] * codes[i1]).astype(np.float32)
    clip.gap = ((1 - w) * gap[i0] + w * gap[i1]).astype(np.float32)
    clip.mask = inside & clip.valid[i0] & clip.valid[i1]


def build_targets(clips: list[ClipData], train_idx: list[int], n_codes: int, clip_weight: dict[int, float],
                  reference: np.ndarray) -> Targets:
    """Neutrals of every speaker, the basis of the training clips, and every clip's targets."""
    weights_all = region_weights(reference)
    region = np.flatnonzero(weights_all > 0)
    neutrals = speaker_neutrals(clips)
    train = [clips[i] for i in train_idx]
    cw = {j: clip_weight[i] for j, i in enumerate(train_idx)}
    basis, explained = fit_basis(train, neutrals, region, weights_all[region], n_codes, cw)
    tg = Targets(region, weights_all[region], basis, neutrals, explained)
    for c in clips:
        clip_targets(c, tg)
    return tg


def loss_scales(clips: list[ClipData], idx: list[int]) -> dict:
    """Variance of each target on the training clips, so that each loss term starts near 1."""
    codes = np.concatenate([clips[i].codes[clips[i].mask] for i in idx])
    gap = np.concatenate([clips[i].gap[clips[i].mask] for i in idx])
    vel = np.concatenate([np.diff(clips[i].codes, axis=0)[clips[i].mask[1:] & clips[i].mask[:-1]] for i in idx])
    return {"codes": float((codes**2).sum(1).mean()) + 1e-12, "gap": float((gap**2).mean()) + 1e-12,
            "velocity": float((vel**2).sum(1).mean()) + 1e-12}


# --- in checkpoints: tensors and JSON ------------------------------------------------------------------------


def targets_to_checkpoint(tg: Targets) -> tuple[dict, dict]:
    """(JSON meta, named arrays): the neutrals stacked in the order of meta["speakers"]."""
    speakers = sorted(tg.neutrals)
    arrays = {"targets.region": tg.region, "targets.weights": tg.weights, "targets.basis": tg.basis,
              "targets.neutrals": np.stack([tg.neutrals[s] for s in speakers]) if speakers
              else np.zeros((0, 0, 3), np.float32)}
    return {"speakers": speakers, "explained": tg.explained}, arrays


def targets_from_checkpoint(meta: dict, tensors: dict, clips: list[ClipData]) -> Targets:
    """The checkpoint's targets (the basis it was trained on), and every clip's targets from them. ValueError
    when the arrays do not fit together or with the clips."""
    a = {k: tensors[f"targets.{k}"].numpy() for k in ("region", "weights", "basis", "neutrals")}
    speakers = [str(s) for s in meta["speakers"]]
    region = a["region"]
    ok = (region.ndim == 1 and a["weights"].shape == region.shape and a["basis"].ndim == 3
          and a["basis"].shape[1:] == (len(region), 3) and a["neutrals"].shape[0] == len(speakers)
          and all(np.isfinite(a[k]).all() for k in ("weights", "basis", "neutrals")))
    if not ok or not np.issubdtype(region.dtype, np.integer):
        raise ValueError("the targets' arrays do not fit together")
    if len(speakers) and (region.min() < 0 or region.max() >= a["neutrals"].shape[1] or a["neutrals"].shape[2] != 3):
        raise ValueError("the targets' region is out of range")
    tg = Targets(region, a["weights"], a["basis"], dict(zip(speakers, a["neutrals"])), float(meta["explained"]))
    missing = sorted({c.source.speaker for c in clips} - set(tg.neutrals))
    if missing:
        raise ValueError(f"no neutral for speaker {missing[0]}")
    gap_index(region)
    for c in clips:
        clip_targets(c, tg)
    return tg
