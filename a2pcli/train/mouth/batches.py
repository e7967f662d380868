"""The training set as one object, its sampling weights, and batches of augmented samples as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2pcli.train.mouth.presets import MouthPreset
from a2pcli.train.mouth.samples import ClipSamples

CHANGE_FULL = 0.06  # face units of lip-gap change at which a sample gets its full sampling weight


@dataclass
class DataSet:
    """Samples of several clips, concatenated (ClipSamples' layouts). Portraits are indexed globally."""

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


def augment(b: dict, gen, p: MouthPreset) -> dict:
    """Flips and one colour change per sample, applied to portrait, warp and truth alike. `gen`: a CPU
    torch.Generator (every draw comes from it)."""
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


def epoch_batches(ds: DataSet, prob: np.ndarray, share: np.ndarray, rng: np.random.Generator, p: MouthPreset,
                  batch_size: int, device: str):
    """Endless augmented batches of one epoch: `batch_size` samples a step, drawn by `prob` from the samples
    whose clip is in `share` (this process's clips; every clip in one process)."""
    import torch

    pool = np.flatnonzero(np.isin(_clip_index(ds), share))
    w = prob[pool] / prob[pool].sum()
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    while True:
        idx = pool[rng.choice(len(pool), size=batch_size, p=w)]
        if not isinstance(ds.warped, np.ndarray):
            idx = torch.from_numpy(idx).to(device)
        yield augment(batch_tensors(ds, idx, device), gen, p)


def _clip_index(ds: DataSet) -> np.ndarray:
    """(N,) clip index of every sample, as NumPy (the set may be on a GPU)."""
    return ds.clip if isinstance(ds.clip, np.ndarray) else ds.clip.cpu().numpy()
