"""Training batches: each epoch's augmented features of every clip, and random crops of them with their
targets. Every random draw comes from the generator passed in (seeded by the run's seed and the epoch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from a2pcli import features
from a2pcli.audio2motion import CODE_RATE, INPUT_STRIDE
from a2pcli.train.audio2motion.data import ClipData
from a2pcli.train.audio2motion.presets import Preset

NOISE_TILT_DB = (-20.0, 10.0)  # spectral tilt of the background noise across the bands, drawn from this range
NOISE_COLOUR_DB = 3.0  # spread of the noise's smoothed per-band colour
NOISE_COLOUR_BANDS = 9  # the colour is smoothed over this many bands
NOISE_FLUTTER_DB = 1.0  # frame-to-frame spread of the noise level
SILENCE_LEAD = 0.25  # a crop may start or end this share of its span in the silence around a clip


def augment_logmel(logmel: np.ndarray, rng: np.random.Generator, p: Preset) -> np.ndarray:
    """Background noise at a random SNR and colour (the loudness and the channel are normalised away).
    logmel: (T100, N_MELS) ln mel power."""
    if rng.random() >= p.noise_prob or len(logmel) == 0:
        return logmel
    level = features.frame_level_db(logmel)
    speech_db = float(np.percentile(level, features.LEVEL_PERCENTILE))
    snr = rng.uniform(*p.snr_db)
    nb = logmel.shape[1]
    tilt = rng.uniform(*NOISE_TILT_DB) * (np.arange(nb) / (nb - 1) - 0.5)  # dB across the bands
    colour = np.convolve(rng.normal(0, NOISE_COLOUR_DB, nb + NOISE_COLOUR_BANDS - 1),
                         np.ones(NOISE_COLOUR_BANDS) / NOISE_COLOUR_BANDS, "valid")
    band_db = speech_db - snr - 10 * math.log10(nb) + tilt + colour
    flutter = rng.normal(0, NOISE_FLUTTER_DB, (len(logmel), 1))
    noise_ln = (band_db[None, :] + flutter) / features.DB_PER_NEPER
    return np.logaddexp(logmel, noise_ln).astype(np.float32)


def warp_mels(feats: np.ndarray, factor: float) -> np.ndarray:
    """Vocal-tract-length warp: band b takes the value at b * factor (linear interpolation, ends held)."""
    nb = feats.shape[1]
    pos = np.clip(np.arange(nb) * factor, 0, nb - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, nb - 1)
    w = (pos - i0).astype(np.float32)
    return feats[:, i0] * (1 - w) + feats[:, i1] * w


@dataclass
class EpochData:
    """Every clip's normalised (augmented) features, padded with silence, ready to crop."""

    feats: list[np.ndarray]  # (pad + T100 + pad, N_MELS)
    pad: int  # feature frames of silence before each clip


def epoch_features(clips: list[ClipData], rng: np.random.Generator, p: Preset, margin: int) -> EpochData:
    """One epoch's augmentation of every clip: noise, normalisation, warp; `margin` codes of context padding."""
    pad = INPUT_STRIDE * (margin + int(p.crop_s * CODE_RATE))
    out = []
    for c in clips:
        f = features.normalise(augment_logmel(c.logmel, rng, p))
        f = warp_mels(f, rng.uniform(1 - p.warp, 1 + p.warp))
        padded = np.full((len(f) + 2 * pad, f.shape[1]), features.FLOOR, np.float32)
        padded[pad : pad + len(f)] = f
        out.append(padded)
    return EpochData(out, pad)


def interp_rows(a: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rows of `a` at fractional positions `pos` (linear interpolation)."""
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(a) - 1)
    i1 = np.minimum(i0 + 1, len(a) - 1)
    w = np.clip(pos - np.floor(pos), 0, 1).astype(np.float32)
    w = w.reshape(-1, *([1] * (a.ndim - 1)))
    return a[i0] * (1 - w) + a[i1] * w


def make_batch(clips: list[ClipData], ed: EpochData, idx: np.ndarray, rng: np.random.Generator, p: Preset,
               margin: int, k: int):
    """Random time-stretched crops of clips `idx` (-1: a silence crop) ->
    feats (B, N_MELS, 2 (L + 2 margin)), codes (B, L, K), gap (B, L), mask (B, L); L = crop codes."""
    n_codes = int(round(p.crop_s * CODE_RATE))
    n_in = INPUT_STRIDE * (n_codes + 2 * margin)
    nb = ed.feats[0].shape[1] if ed.feats else features.N_MELS
    x = np.full((len(idx), n_in, nb), features.FLOOR, np.float32)
    y = np.zeros((len(idx), n_codes, k), np.float32)
    g = np.zeros((len(idx), n_codes), np.float32)
    m = np.zeros((len(idx), n_codes), np.float32)
    for b, ci in enumerate(idx):
        if ci < 0:  # a silence crop: closed mouth, targets zero
            m[b] = 1.0
            continue
        c = clips[ci]
        rate = rng.uniform(1 - p.stretch, 1 + p.stretch)
        span = n_codes * rate
        lo, hi = -SILENCE_LEAD * span, max(len(c.codes) - (1 - SILENCE_LEAD) * span, -SILENCE_LEAD * span + 1)
        start = rng.uniform(lo, hi)  # crops may reach a little into the silence around the clip
        pos50 = start + np.arange(n_codes) * rate
        pos100 = ed.pad + INPUT_STRIDE * (start - margin * rate) + np.arange(n_in) * rate
        x[b] = interp_rows(ed.feats[ci], np.clip(pos100, 0, len(ed.feats[ci]) - 1))
        for _ in range(p.freq_masks if p.freq_mask_bands else 0):
            w = int(rng.integers(0, p.freq_mask_bands + 1))
            f0 = int(rng.integers(0, nb - w + 1))
            x[b, :, f0 : f0 + w] = 0.0  # the speech-frame mean of the band (features are mean-normalised)
        inside = (pos50 >= 0) & (pos50 <= len(c.codes) - 1)
        y[b] = interp_rows(c.codes, np.clip(pos50, 0, len(c.codes) - 1))
        g[b] = interp_rows(c.gap, np.clip(pos50, 0, len(c.codes) - 1))
        near = np.clip(np.round(pos50).astype(np.int64), 0, len(c.codes) - 1)
        m[b] = (inside & c.mask[near]).astype(np.float32)
    return x.transpose(0, 2, 1).copy(), y, g, m


def epoch_batches(clips: list[ClipData], prob: np.ndarray, rng: np.random.Generator, p: Preset, batch_size: int,
                  margin: int, k: int):
    """Endless batches of one epoch: clips drawn by `prob`, a share replaced by silence crops."""
    ed = epoch_features(clips, rng, p, margin)
    while True:
        pick = rng.choice(len(clips), size=batch_size, p=prob)
        pick[rng.random(batch_size) < p.silence_share] = -1
        yield make_batch(clips, ed, pick, rng, p, margin, k)
