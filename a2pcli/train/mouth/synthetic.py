"""Synthetic mouth samples for tests and benchmarks: `a2p train mouth` runs end to end without videos.

    make_synthetic_samples(sources, cache_dir, presets=("tiny",)) -> None

writes, for each clip source (e.g. a2pcli.train.synthetic.make_synthetic_data's stand-in files) and preset, the
cache entry its samples would have (samples.samples_entry): drawn mouths of a speaker's own skin and lip colours,
the truth opening wider than the portrait's closed mouth (a dark cavity and a band of upper teeth between the lip
rings), the warp showing stretched lip there instead. Deterministic for a seed; a model trained on them is of no
use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from a2pcli.train.clips import ClipSource, write_entry
from a2pcli.train.mouth.presets import PRESETS
from a2pcli.train.mouth.samples import ClipSamples, samples_arrays, samples_entry

MOUTH_WIDTH = 0.6  # of the crop side
LIP_THICKNESS = 0.08  # of the crop side
MAX_OPEN = 0.35  # the widest inner opening, of the crop side


def make_synthetic_samples(sources: list[ClipSource], cache_dir: Path, presets: tuple[str, ...] = ("tiny",),
                           samples: int = 12, seed: int = 0) -> None:
    """Write every source's synthetic samples into `cache_dir` for each of `presets` (their crop sizes)."""
    rng = np.random.default_rng(seed)
    colours = {}
    for src in sources:
        if src.speaker not in colours:
            colours[src.speaker] = (rng.uniform(120, 230, 3), rng.uniform(90, 200, 3) * [1.0, 0.6, 0.6])
        for name in presets:
            p = PRESETS[name]
            clip = synthetic_samples(src, p.model.size, samples, *colours[src.speaker], p.model.px_per_unit, rng)
            write_entry(samples_entry(Path(cache_dir), src, p), samples_arrays(clip))


def _mouth(size: int, skin, lip, opening: float, teeth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, S, 3) uint8 image of a mouth opened `opening` (share of the side), its inner and outer lip masks."""
    import cv2

    c = (size / 2, size / 2)
    half_w = MOUTH_WIDTH * size / 2
    inner_h = max(opening * size / 2, 0.5)
    outer = ((c[0], c[1]), (2 * half_w, 2 * (inner_h + LIP_THICKNESS * size)), 0)
    inner = ((c[0], c[1]), (2 * half_w * 0.9, 2 * inner_h), 0)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.clip(skin, 0, 255)
    masks = []
    for box, colour in ((outer, lip), (inner, lip * 0.25)):
        m = np.zeros((size, size), np.uint8)
        cv2.ellipse(m, box, 255, -1, cv2.LINE_AA)
        a = m[..., None] / 255.0
        img = np.clip(img * (1 - a) + np.asarray(colour) * a, 0, 255).astype(np.uint8)
        masks.append(m)
    if teeth and opening > 0.05:
        band = (masks[1] > 128) & (np.arange(size)[:, None] < c[1] - inner_h * 0.4)
        img[band] = 235
    return img, masks[1], masks[0]


def synthetic_samples(src: ClipSource, size: int, n: int, skin, lip, px_per_unit: float,
                      rng: np.random.Generator) -> ClipSamples:
    """`n` samples of one clip: a closed-mouth portrait, targets opening wider (see the module doc)."""
    portrait, p_inner, _ = _mouth(size, skin, lip, 0.02, teeth=False)
    openings = rng.uniform(0.08, MAX_OPEN, n)
    warped, truth, interior, lips = [], [], [], []
    for o in openings:
        real, inner, outer = _mouth(size, skin, lip, o, teeth=True)
        stretched, _, _ = _mouth(size, skin, lip, 0.0, teeth=False)
        warped.append(np.where((outer > 0)[..., None], np.maximum(stretched, real // 2 + 60), real))
        truth.append(real)
        interior.append(np.zeros((size, size), np.uint8))
        lips.append(np.stack([inner, outer]))
    portraits = np.concatenate([portrait, p_inner[..., None]], -1)[None]
    return ClipSamples(src, portraits, np.zeros(1, np.int32), np.stack(warped), np.stack(truth), np.stack(interior),
                       np.stack(lips), np.zeros(n, np.int32), np.ones(n, np.float32),
                       (openings * size / px_per_unit).astype(np.float32), np.arange(1, n + 1, dtype=np.int32))
