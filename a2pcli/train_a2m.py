"""Training the audio2motion model on talking videos with their speech.

    train(TrainOptions(...), reporter) -> summary dict        (what `a2p train audio2motion` calls)

Stages, each a function below:
  1. find_sources: videos under the data folders (recursively), each with its speech: the video's own
     audio track, else a `.wav`/`.flac` of the same stem beside it. Speaker = the parent folder's name
     (or a mapping given by the caller).
  2. prepare_clip: MediaPipe landmarks (a2pcli.extract.extract_motion) and log-mel spectra, computed once
     and cached in OUT/cache/<sha256 of the files>.npz.
  3. build_targets: per speaker, the CLOSED-mouth neutral (the mean expression over its frames with the
     smallest mouth opening); deltas = expression - neutral on the lower-face region; a linear basis
     (uncentred PCA) of the training speakers' deltas; the codes of every clip resampled to 50 Hz.
  4. split by speaker: --val-speakers, else a share of the speakers picked by the seed.
  5. the loop: random crops (time-stretched, vocal-tract warped, noisy), loss on codes, on the
     lip gap, on its velocity and the gap's correlation; validation each epoch on whole held-out clips
     through the same predict path as inference (mouth-opening correlation and spread vs the real clip,
     and a loudness-envelope baseline); a checkpoint (model, optimizer, step, config, split, history)
     each epoch; --resume continues from one.
  6. export: config.json + model.safetensors in OUT, loadable with a2pcli.audio2motion.load_model(OUT).

Seeded: the split, every crop and every augmentation derive from --seed and the epoch number, so a run
resumed from a checkpoint continues exactly as an uninterrupted one would (on the same device).
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

from a2pcli import features
from a2pcli.audio2motion import (CODE_RATE, INPUT_STRIDE, A2MConfig, Audio2Motion, build_network, n_codes_for,
                                 region_weights, save_model)
from a2pcli.errors import A2PError, InputError, OutputError
from a2pcli.landmarks import LOWER_LIP_INNER, UPPER_LIP_INNER, mouth_opening
from a2pcli.progress import Reporter

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v")
SIDECAR_AUDIO_EXTS = (".wav", ".flac")  # speech beside a silent video, same stem
CACHE_VERSION = 1  # bump when what a cache file holds changes
NEUTRAL_PERCENTILE = 10.0  # a speaker's closed-mouth neutral: mean of its frames at or below this opening percentile
CHECKPOINT_DIR, LAST_CHECKPOINT = "checkpoints", "last.pt"
LOG_FILE = "train_log.jsonl"
MIN_VAL_FRAMES = 25  # validation clips shorter than this (valid frames) are skipped in the metrics
ENVELOPE_WINDOW_S = 0.04  # the loudness-envelope baseline: RMS over this window around each frame


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
    resume: Path | None = None
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class Preset:
    """Internal knobs of a training run."""

    model: A2MConfig
    epochs: int
    batch_size: int
    lr: float
    crop_s: float = 3.0  # seconds of targets per training crop
    weight_decay: float = 0.01
    warmup_steps: int = 100
    val_share: float = 0.15  # share of speakers held out when --val-speakers is not given
    speaker_cap_s: float = 150.0  # a speaker with more footage than this is sampled as if it had this much
    steps_per_epoch: int | None = None  # None: the effective data length over the batch's seconds
    max_clip_s: float | None = None  # cut clips to this length (tiny preset)
    silence_share: float = 0.05  # share of crops that are pure silence with a closed mouth
    stretch: float = 0.1  # time-stretch factors drawn from [1 - stretch, 1 + stretch]
    warp: float = 0.08  # vocal-tract-length warp of the mel axis, factors in [1 - warp, 1 + warp]
    noise_prob: float = 0.5  # share of clips given background noise each epoch
    snr_db: tuple[float, float] = (8.0, 40.0)
    freq_masks: int = 0  # SpecAugment: this many bands of random width (up to freq_mask_bands) zeroed per crop
    freq_mask_bands: int = 0
    loss_codes: float = 1.0  # weights of the loss terms
    loss_gap: float = 1.0
    loss_velocity: float = 0.5
    loss_corr: float = 0.2  # 1 - concordance of the lip gap per crop (correlation and spread)
    loss_pearson: float = 0.0  # 1 - Pearson correlation of the lip gap per crop (timing and shape only)
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # validation and export use an exponential moving average of the weights (0: off)
    calibrate_spread: bool = True  # scale the output so the training clips' mouth-opening spread matches


PRESETS = {
    "tiny": Preset(model=A2MConfig(channels=32, dilations=(1, 2, 4), n_codes=8, dropout=0.0), epochs=2,
                   batch_size=4, lr=2e-3, crop_s=1.0, warmup_steps=2, steps_per_epoch=3, max_clip_s=2.0,
                   val_share=0.5, ema_decay=0.5),
    # the shipped model's recipe (models/audio2motion/README.md): a wider net, a high learning rate, long
    # speakers sampled down hard, and a loss led by the lip gap's per-crop concordance (correlation and
    # level: the mouth must still close between syllables)
    "default": Preset(model=A2MConfig(channels=192), epochs=70, batch_size=32, lr=2e-3, speaker_cap_s=60.0,
                      loss_codes=0.2, loss_gap=1.0, loss_velocity=0.1, loss_corr=3.0),
}


# --- 1. sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSource:
    video: Path
    sidecar: Path | None  # a same-stem audio file beside the video (used when the video has no sound)
    speaker: str
    name: str  # for messages: the path relative to its data folder


def find_sources(data: list[Path], speaker_of: dict[str, str] | None = None) -> list[ClipSource]:
    """Videos under the data folders, sorted by path. speaker_of maps a file name (or stem) to its
    speaker; otherwise the speaker is the parent folder's name."""
    out = []
    for root in data:
        root = Path(root)
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file()):
            sidecar = next((path.with_suffix(e) for e in SIDECAR_AUDIO_EXTS if path.with_suffix(e).is_file()), None)
            speaker = path.parent.name
            if speaker_of:
                speaker = speaker_of.get(path.name, speaker_of.get(path.stem, speaker))
            out.append(ClipSource(path, sidecar, speaker, str(path.relative_to(root.parent))))
    return out


# --- 2. per-clip data, cached ----------------------------------------------------------------------


@dataclass
class ClipData:
    source: ClipSource
    fps: float
    expression: np.ndarray  # (T, 478, 3) float32 face units
    opening: np.ndarray  # (T,) float32 real mouth opening (a2pcli.landmarks.mouth_opening)
    valid: np.ndarray  # (T,) bool: a face was detected in the frame
    logmel: np.ndarray  # (T100, N_MELS) float32 ln mel power (features.log_mel)
    audio_from: str  # "video" or the sidecar's name
    # filled by build_targets:
    codes: np.ndarray | None = None  # (T50, K) codes at 50 Hz
    gap: np.ndarray | None = None  # (T50,) lip-gap change (lower minus upper inner lip, y), face units
    mask: np.ndarray | None = None  # (T50,) bool: the targets are real

    @property
    def duration(self) -> float:
        return min(len(self.expression) / self.fps, len(self.logmel) / features.FRAME_RATE)


def _file_key(path: Path) -> str:
    from a2pcli.cache import sha256_file

    return sha256_file(path)


def cache_path(cache_dir: Path, src: ClipSource, max_clip_s: float | None) -> Path:
    parts = [f"v{CACHE_VERSION}", _file_key(src.video), _file_key(src.sidecar) if src.sidecar else "-",
             f"max{max_clip_s}"]
    return cache_dir / (hashlib.sha256(" ".join(parts).encode()).hexdigest()[:32] + ".npz")


def _load_speech(src: ClipSource, max_clip_s: float | None) -> tuple[np.ndarray, str]:
    from a2pcli.audio import load_audio, probe_audio

    track = probe_audio(src.video)
    if track is not None and track.has_sound:
        path, origin = src.video, "video"
    elif src.sidecar is not None:
        path, origin = src.sidecar, src.sidecar.name
    else:
        why = "no audio track" if track is None else "a silent audio track"
        raise InputError(f"has {why} and no .wav of the same name beside it", subject=str(src.video))
    return load_audio(path, features.SAMPLE_RATE, duration_s=max_clip_s), origin


def prepare_clip(src: ClipSource, cache_dir: Path, max_clip_s: float | None = None) -> ClipData:
    """Landmarks and log-mel of one clip, from the cache when it holds them."""
    path = cache_path(cache_dir, src, max_clip_s)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return ClipData(src, float(z["fps"]), z["expression"].astype(np.float32), z["opening"],
                                z["valid"], z["logmel"], str(z["audio_from"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable: recompute and overwrite
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.outputs import atomic_path

    audio, origin = _load_speech(src, max_clip_s)
    motion, _ = extract_motion(src.video, ExtractOptions(end=max_clip_s), Reporter())
    canon = motion.reference + motion.expression
    clip = ClipData(src, motion.fps, motion.expression.astype(np.float32), mouth_opening(canon).astype(np.float32),
                    motion.valid & ~motion.filled, features.log_mel(audio), origin)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, fps=np.float64(clip.fps), expression=clip.expression.astype(np.float16), opening=clip.opening,
                 valid=clip.valid, logmel=clip.logmel, audio_from=np.array(origin), name=np.array(src.name))
    clip.expression = clip.expression.astype(np.float16).astype(np.float32)  # the same values as a cache hit
    return clip


def prepare_all(sources: list[ClipSource], cache_dir: Path, max_clip_s: float | None,
                reporter: Reporter) -> list[ClipData]:
    clips = []
    reporter.stage("prepare data (landmarks + features, cached)", len(sources))
    for src in sources:
        try:
            clips.append(prepare_clip(src, cache_dir, max_clip_s))
        except A2PError as exc:
            reporter.warn(f"skipped {src.name}: {exc.one_line()}")
        reporter.advance()
    return clips


# --- 3. targets -----------------------------------------------------------------------------------


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


def _gap_index(region: np.ndarray) -> tuple[int, int]:
    pos = {int(r): i for i, r in enumerate(region)}
    return pos[UPPER_LIP_INNER], pos[LOWER_LIP_INNER]


def clip_targets(clip: ClipData, tg: Targets) -> None:
    """Fill clip.codes/gap/mask: the clip's codes and lip gap at the 50 Hz code times."""
    d = region_deltas(clip, tg.neutrals[clip.source.speaker], tg.region, tg.weights)
    codes = np.einsum("trc,krc->tk", d, tg.basis)
    iu, il = _gap_index(tg.region)
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


def build_targets(clips: list[ClipData], train_idx: list[int], cfg: A2MConfig, clip_weight: dict[int, float],
                  reference: np.ndarray) -> Targets:
    weights_all = region_weights(reference)
    region = np.flatnonzero(weights_all > 0)
    neutrals = speaker_neutrals(clips)
    train = [clips[i] for i in train_idx]
    cw = {j: clip_weight[i] for j, i in enumerate(train_idx)}
    basis, explained = fit_basis(train, neutrals, region, weights_all[region], cfg.n_codes, cw)
    tg = Targets(region, weights_all[region], basis, neutrals, explained)
    for c in clips:
        clip_targets(c, tg)
    return tg


# --- 4. split and sampling weights -----------------------------------------------------------------


def split_speakers(clips: list[ClipData], val_speakers: tuple[str, ...] | None, share: float,
                   seed: int) -> tuple[list[int], list[int]]:
    speakers = sorted({c.source.speaker for c in clips})
    if val_speakers is not None:
        unknown = sorted(set(val_speakers) - set(speakers))
        if unknown:
            raise InputError(f"no clip has speaker(s) {', '.join(unknown)}", subject="--val-speakers",
                             remedy=f"speakers are folder names; found: {', '.join(speakers[:20])}")
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


def sampling_weights(clips: list[ClipData], idx: list[int], cap_s: float) -> dict[int, float]:
    """clip index -> its effective seconds: its duration, scaled down for speakers with more than cap_s."""
    per_spk: dict[str, float] = {}
    for i in idx:
        per_spk[clips[i].source.speaker] = per_spk.get(clips[i].source.speaker, 0.0) + clips[i].duration
    return {i: clips[i].duration * min(1.0, cap_s / max(per_spk[clips[i].source.speaker], 1e-9)) for i in idx}


# --- 5. augmentation and batches ----------------------------------------------------------------------


def augment_logmel(logmel: np.ndarray, rng: np.random.Generator, p: Preset) -> np.ndarray:
    """Background noise at a random SNR and colour (the loudness and the channel are normalised away)."""
    if rng.random() >= p.noise_prob or len(logmel) == 0:
        return logmel
    level = features.frame_level_db(logmel)
    speech_db = float(np.percentile(level, features.LEVEL_PERCENTILE))
    snr = rng.uniform(*p.snr_db)
    nb = logmel.shape[1]
    tilt = rng.uniform(-20, 10) * (np.arange(nb) / (nb - 1) - 0.5)  # dB across the bands
    colour = np.convolve(rng.normal(0, 3, nb + 8), np.ones(9) / 9, "valid")
    band_db = speech_db - snr - 10 * math.log10(nb) + tilt + colour
    flutter = rng.normal(0, 1.0, (len(logmel), 1))
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
    pad = INPUT_STRIDE * (margin + int(p.crop_s * CODE_RATE))
    out = []
    for c in clips:
        f = features.normalise(augment_logmel(c.logmel, rng, p))
        f = warp_mels(f, rng.uniform(1 - p.warp, 1 + p.warp))
        padded = np.full((len(f) + 2 * pad, f.shape[1]), features.FLOOR, np.float32)
        padded[pad : pad + len(f)] = f
        out.append(padded)
    return EpochData(out, pad)


def _interp_rows(a: np.ndarray, pos: np.ndarray) -> np.ndarray:
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(a) - 1)
    i1 = np.minimum(i0 + 1, len(a) - 1)
    w = np.clip(pos - np.floor(pos), 0, 1).astype(np.float32)
    w = w.reshape(-1, *([1] * (a.ndim - 1)))
    return a[i0] * (1 - w) + a[i1] * w


def make_batch(clips: list[ClipData], ed: EpochData, idx: np.ndarray, rng: np.random.Generator, p: Preset,
               margin: int, k: int):
    """-> feats (B, N_MELS, 2 (L + 2 margin)), codes (B, L, K), gap (B, L), mask (B, L); L = crop codes."""
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
        lo, hi = -0.25 * span, max(len(c.codes) - 0.75 * span, -0.25 * span + 1)
        start = rng.uniform(lo, hi)  # crops may reach a little into the silence around the clip
        pos50 = start + np.arange(n_codes) * rate
        pos100 = ed.pad + INPUT_STRIDE * (start - margin * rate) + np.arange(n_in) * rate
        x[b] = _interp_rows(ed.feats[ci], np.clip(pos100, 0, len(ed.feats[ci]) - 1))
        for _ in range(p.freq_masks if p.freq_mask_bands else 0):
            w = int(rng.integers(0, p.freq_mask_bands + 1))
            f0 = int(rng.integers(0, nb - w + 1))
            x[b, :, f0 : f0 + w] = 0.0  # the speech-frame mean of the band (features are mean-normalised)
        inside = (pos50 >= 0) & (pos50 <= len(c.codes) - 1)
        y[b] = _interp_rows(c.codes, np.clip(pos50, 0, len(c.codes) - 1))
        g[b] = _interp_rows(c.gap, np.clip(pos50, 0, len(c.codes) - 1))
        near = np.clip(np.round(pos50).astype(np.int64), 0, len(c.codes) - 1)
        m[b] = (inside & c.mask[near]).astype(np.float32)
    return x.transpose(0, 2, 1).copy(), y, g, m


# --- the loss -------------------------------------------------------------------------------------


@dataclass
class LossParts:
    total: object
    codes: float
    gap: float
    velocity: float
    corr: float


def compute_loss(pred, codes, gap, mask, gap_dir, scales: dict, p: Preset) -> LossParts:
    """pred, codes: (B, L, K); gap, mask: (B, L); gap_dir: (K,) lip gap per unit code."""
    import torch

    msum = mask.sum().clamp(min=1.0)
    l_codes = (((pred - codes) ** 2).sum(-1) * mask).sum() / msum / scales["codes"]
    pgap = pred @ gap_dir
    l_gap = (((pgap - gap) ** 2) * mask).sum() / msum / scales["gap"]
    mv = mask[:, 1:] * mask[:, :-1]
    dv = (pred[:, 1:] - pred[:, :-1]) - (codes[:, 1:] - codes[:, :-1])
    l_vel = ((dv**2).sum(-1) * mv).sum() / mv.sum().clamp(min=1.0) / scales["velocity"]
    n = mask.sum(1)
    ok = n >= 10
    if ok.any():
        mu_p = (pgap * mask).sum(1) / n.clamp(min=1)
        mu_t = (gap * mask).sum(1) / n.clamp(min=1)
        a, b = (pgap - mu_p[:, None]) * mask, (gap - mu_t[:, None]) * mask
        nn_ = n.clamp(min=1)
        cov, var_p, var_t = (a * b).sum(1) / nn_, (a**2).sum(1) / nn_, (b**2).sum(1) / nn_
        ccc = 2 * cov / (var_p + var_t + (mu_p - mu_t) ** 2 + 1e-10)  # concordance: correlation and spread
        pearson = cov / torch.sqrt(var_p * var_t + 1e-20)
        keep = ok & (var_t > 1e-8)
        l_corr = (1 - ccc[keep]).mean() if keep.any() else pred.sum() * 0
        l_pear = (1 - pearson[keep]).mean() if keep.any() else pred.sum() * 0
    else:
        l_corr = l_pear = pred.sum() * 0
    total = p.loss_codes * l_codes + p.loss_gap * l_gap + p.loss_velocity * l_vel + p.loss_corr * l_corr
    if p.loss_pearson:
        total = total + p.loss_pearson * l_pear
    return LossParts(total, float(l_codes.detach()), float(l_gap.detach()), float(l_vel.detach()), float(l_corr.detach()))


def loss_scales(clips: list[ClipData], idx: list[int]) -> dict:
    """Variance of each target on the training clips, so that each loss term starts near 1."""
    codes = np.concatenate([clips[i].codes[clips[i].mask] for i in idx])
    gap = np.concatenate([clips[i].gap[clips[i].mask] for i in idx])
    vel = np.concatenate([np.diff(clips[i].codes, axis=0)[clips[i].mask[1:] & clips[i].mask[:-1]] for i in idx])
    return {"codes": float((codes**2).sum(1).mean()) + 1e-12, "gap": float((gap**2).mean()) + 1e-12,
            "velocity": float((vel**2).sum(1).mean()) + 1e-12}


# --- evaluation ------------------------------------------------------------------------------------


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a**2).sum() * (b**2).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def loudness_envelope(logmel: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) RMS amplitude of the speech around each video frame (the baseline predictor)."""
    power = np.exp(features.frame_level_db(logmel) / features.DB_PER_NEPER)
    half = max(1, int(round(ENVELOPE_WINDOW_S * features.FRAME_RATE / 2)))
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    rms = np.sqrt(np.convolve(power, kernel, "same"))
    pos = np.clip(np.arange(n_frames) / fps * features.FRAME_RATE, 0, len(rms) - 1)
    return np.interp(pos, np.arange(len(rms)), rms)


def evaluate_clip(model: Audio2Motion, clip: ClipData, reference: np.ndarray, neutral: np.ndarray) -> dict | None:
    """Mouth-opening agreement between the prediction and the real clip, on its valid frames.

    The prediction is mouth_opening(reference + neutral + delta): the model's delta on the speaker's own
    closed mouth (as on a portrait); the real one is mouth_opening(reference + expression)."""
    from a2pcli.audio2motion import resample_codes

    n = min(len(clip.expression), int(len(clip.logmel) / features.FRAME_RATE * clip.fps))
    valid = clip.valid[:n]
    if valid.sum() < MIN_VAL_FRAMES:
        return None
    codes = (run_network_codes(model, clip))
    delta = model.expand(resample_codes(codes, clip.fps, n))
    pred = mouth_opening(reference + neutral + delta)[valid]
    real = clip.opening[:n][valid]
    env = loudness_envelope(clip.logmel, clip.fps, n)[valid]
    sd_real = float(real.std())
    return {"clip": clip.source.name, "speaker": clip.source.speaker, "seconds": round(n / clip.fps, 2),
            "r": round(_corr(pred, real), 4), "envelope_r": round(_corr(env, real), 4),
            "std_ratio": round(float(pred.std()) / sd_real, 3) if sd_real > 0 else None,
            "real_std": round(sd_real, 4), "pred_std": round(float(pred.std()), 4)}


def run_network_codes(model: Audio2Motion, clip: ClipData) -> np.ndarray:
    """The model's codes for the clip's speech (what Audio2Motion.predict computes before resampling)."""
    return model.codes_from_logmel(clip.logmel)


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {}
    ratios = [r["std_ratio"] for r in rows if r["std_ratio"] is not None]
    return {"clips": len(rows), "mouth_opening_r": round(float(np.mean([r["r"] for r in rows])), 4),
            "envelope_r": round(float(np.mean([r["envelope_r"] for r in rows])), 4),
            "std_ratio": round(float(np.mean(ratios)), 3) if ratios else None,
            "std_ratio_in_range": int(sum(0.6 <= x <= 1.5 for x in ratios))}


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a checkpoint holds besides the tensors."""

    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict] = field(default_factory=list)


def resolve_preset(opts: TrainOptions) -> Preset:
    p = PRESETS[opts.preset]
    return replace(p, epochs=opts.epochs or p.epochs, batch_size=opts.batch_size or p.batch_size,
                   lr=opts.lr if opts.lr is not None else p.lr)


def find_checkpoint(resume: Path | None, output: Path) -> Path | None:
    if resume is None:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST_CHECKPOINT if (path / CHECKPOINT_DIR).is_dir() else path / LAST_CHECKPOINT
    if not path.is_file():
        raise InputError("no checkpoint there", subject=str(path), remedy="give a checkpoint file or a model folder "
                         f"with {CHECKPOINT_DIR}/{LAST_CHECKPOINT}")
    return path


def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _derive(seed: int, *parts) -> int:
    return zlib.crc32(" ".join(map(str, (seed, *parts))).encode())


def train(opts: TrainOptions, reporter: Reporter | None = None) -> dict:
    """Prepare the data, train, validate, checkpoint and export. Returns the summary."""
    import torch

    from a2pcli.device import preflight
    from a2pcli.device import JobEstimate
    from a2pcli.headpose import load_reference

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    p = resolve_preset(opts)
    ckpt_path = find_checkpoint(opts.resume, opts.output)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path else None
    if ckpt is not None:
        p = _preset_from_checkpoint(ckpt, p)
    choice = preflight(opts.device, JobEstimate("training audio2motion", vram_bytes=2 << 30))
    device = choice.device
    reporter.info(f"device: {choice.device} ({choice.name}); preset {opts.preset}, {p.epochs} epochs, "
                  f"batch {p.batch_size}, lr {p.lr:g}")
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is None and (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run: the log starts again

    speaker_of = _speaker_map(opts.data)
    sources = find_sources(list(opts.data), speaker_of)
    if not sources:
        raise InputError("no videos found", subject=", ".join(map(str, opts.data)),
                         remedy=f"put talking videos ({', '.join(VIDEO_EXTS)}) with speech in the folder")
    clips = prepare_all(sources, out / "cache", p.max_clip_s, reporter)
    if len(clips) < 2:
        raise InputError(f"only {len(clips)} usable clip(s)", subject=", ".join(map(str, opts.data)),
                         remedy="training needs talking videos of at least two speakers (one is held out)")
    if ckpt is not None:
        train_idx, val_idx = _split_from_checkpoint(ckpt, clips)
    else:
        train_idx, val_idx = split_speakers(clips, opts.val_speakers, p.val_share, opts.seed)
    cw = sampling_weights(clips, train_idx, p.speaker_cap_s)
    reference = load_reference().mean
    cfg = p.model
    tg = build_targets(clips, train_idx, cfg, cw, reference)
    cfg = replace(cfg, n_region=len(tg.region))
    if ckpt is not None:
        tg = _targets_from_checkpoint(ckpt, tg, clips)
    reporter.info(_data_line(clips, train_idx, val_idx, cw, tg))

    _seed_all(opts.seed)
    net = build_network(cfg).to(device)
    ema = _make_ema(net, p)
    optim = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    state = RunState()
    if ckpt is not None:
        net.load_state_dict(ckpt["model"], strict=True)
        if ema is not net:
            ema.load_state_dict(ckpt["ema"], strict=True)
        optim.load_state_dict(ckpt["optimizer"])
        state = RunState(ckpt["epoch"], ckpt["step"], ckpt["history"])
        reporter.info(f"resumed from {ckpt_path} after epoch {state.epoch} (step {state.step})")
    ctx = _Context(clips, train_idx, val_idx, cw, tg, cfg, p, opts, device, reference, out, ema)
    scales = loss_scales(clips, train_idx)
    gap_dir = torch.from_numpy(_gap_dir(tg)).to(device)
    steps = p.steps_per_epoch or max(1, int(round(sum(cw.values()) / (p.crop_s * p.batch_size))))
    total_steps = steps * p.epochs
    reporter.stage("train", total_steps)
    reporter.advance(state.step)
    for epoch in range(state.epoch + 1, p.epochs + 1):
        row = train_epoch(ctx, net, optim, epoch, steps, total_steps, state, scales, gap_dir, reporter)
        row.update(validate(ctx, ema, scales))
        state.history.append(row)
        state.epoch = epoch
        _append_log(out, row)
        save_checkpoint(out, net, optim, state, ctx)
        reporter.info(_epoch_line(row, p.epochs))
    model = export(ctx, ema, state, scales, reporter)
    return _summary(ctx, state, model, t0, choice)


@dataclass
class _Context:
    clips: list[ClipData]
    train_idx: list[int]
    val_idx: list[int]
    cw: dict[int, float]
    tg: Targets
    cfg: A2MConfig
    p: Preset
    opts: TrainOptions
    device: str
    reference: np.ndarray
    out: Path
    ema: object  # the averaged network (the training network itself when EMA is off)


def _gap_dir(tg: Targets) -> np.ndarray:
    iu, il = _gap_index(tg.region)
    return (tg.basis[:, il, 1] - tg.basis[:, iu, 1]).astype(np.float32)


def _lr_at(step: int, total: int, p: Preset) -> float:
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    frac = (step - p.warmup_steps) / max(1, total - p.warmup_steps)
    return p.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_epoch(ctx: _Context, net, optim, epoch: int, steps: int, total_steps: int, state: RunState,
                scales: dict, gap_dir, reporter: Reporter) -> dict:
    import torch

    p, cfg = ctx.p, ctx.cfg
    rng = np.random.default_rng(_derive(ctx.opts.seed, "epoch", epoch))
    torch.manual_seed(_derive(ctx.opts.seed, "torch", epoch))
    margin = cfg.context_codes + 2
    train_clips = [ctx.clips[i] for i in ctx.train_idx]
    ed = epoch_features(train_clips, rng, p, margin)
    prob = np.array([ctx.cw[i] for i in ctx.train_idx])
    prob /= prob.sum()
    net.train()
    sums = {"loss": 0.0, "codes": 0.0, "gap": 0.0, "velocity": 0.0, "corr": 0.0}
    t0 = time.perf_counter()
    for _ in range(steps):
        pick = rng.choice(len(train_clips), size=p.batch_size, p=prob)
        pick[rng.random(p.batch_size) < p.silence_share] = -1
        x, y, g, m = make_batch(train_clips, ed, pick, rng, p, margin, cfg.n_codes)
        x, y, g, m = (torch.from_numpy(a).to(ctx.device) for a in (x, y, g, m))
        for group in optim.param_groups:
            group["lr"] = _lr_at(state.step, total_steps, p)
        pred = net(x).transpose(1, 2)[:, margin : margin + y.shape[1]]
        parts = compute_loss(pred, y, g, m, gap_dir, scales, p)
        optim.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
        optim.step()
        state.step += 1
        _update_ema(ctx.ema, net, p.ema_decay, state.step)
        sums["loss"] += float(parts.total.detach())
        for k in ("codes", "gap", "velocity", "corr"):
            sums[k] += getattr(parts, k)
        reporter.advance()
    row = {"epoch": epoch, "step": state.step, "lr": round(_lr_at(state.step - 1, total_steps, p), 6),
           "seconds": round(time.perf_counter() - t0, 1)}
    row.update({f"train_{k}": round(v / steps, 4) for k, v in sums.items()})
    return row


def _make_ema(net, p: Preset):
    import copy

    if not p.ema_decay:
        return net
    ema = copy.deepcopy(net)
    for q in ema.parameters():
        q.requires_grad_(False)
    return ema


def _update_ema(ema, net, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * net, with d ramping up over the first steps."""
    import torch

    if ema is net:
        return
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, q in zip(ema.parameters(), net.parameters()):
            e.mul_(d).add_(q.detach(), alpha=1 - d)
        for e, q in zip(ema.buffers(), net.buffers()):
            e.copy_(q)


def _model_for_eval(ctx: _Context, net, gain: float | None = None) -> Audio2Motion:
    net.eval()
    silence = silence_code(net, ctx.cfg, ctx.device)
    cfg = ctx.cfg if gain is None else replace(ctx.cfg, output_gain=gain)
    return Audio2Motion(cfg, net, ctx.tg.basis, ctx.tg.region, silence, {}, ctx.device)


def silence_code(net, cfg: A2MConfig, device: str) -> np.ndarray:
    """The net's raw output in the middle of a stretch of silence."""
    from a2pcli.audio2motion import run_network

    feats = np.full((4 * INPUT_STRIDE * cfg.context_codes + 8, cfg.n_mels), features.FLOOR, np.float32)
    codes = run_network(net, feats, cfg, device)
    return codes[len(codes) // 2].astype(np.float32)


def validate(ctx: _Context, net, scales: dict, gain: float | None = None) -> dict:
    """Loss and mouth-opening metrics on the whole held-out clips."""
    if not ctx.val_idx:
        return {}
    model = _model_for_eval(ctx, net, gain)
    rows, se, n = [], 0.0, 0
    for i in ctx.val_idx:
        c = ctx.clips[i]
        codes = run_network_codes(model, c)
        k = min(len(codes), len(c.codes))
        mk = c.mask[:k]
        se += float(((codes[:k] / model.config.output_gain - c.codes[:k])[mk] ** 2).sum())
        n += int(mk.sum())
        r = evaluate_clip(model, c, ctx.reference, ctx.tg.neutrals[c.source.speaker])
        if r:
            rows.append(r)
    out = {"val_loss_codes": round(se / max(n, 1) / scales["codes"], 4)}
    s = summarise(rows)
    if s:
        out.update({"val_mouth_r": s["mouth_opening_r"], "val_envelope_r": s["envelope_r"],
                    "val_std_ratio": s["std_ratio"]})
    out["val_clips"] = rows
    return out


def save_checkpoint(out: Path, net, optim, state: RunState, ctx: _Context) -> Path:
    import torch

    from a2pcli.outputs import atomic_path

    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data = {"model": net.state_dict(), "ema": ctx.ema.state_dict(), "optimizer": optim.state_dict(),
            "epoch": state.epoch, "step": state.step,
            "history": state.history, "config": asdict(ctx.cfg), "preset": _preset_dict(ctx.p),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(ctx.opts).items()},
            "split": {"train": [ctx.clips[i].source.name for i in ctx.train_idx],
                      "val": [ctx.clips[i].source.name for i in ctx.val_idx]},
            "targets": {"basis": ctx.tg.basis, "region": ctx.tg.region, "weights": ctx.tg.weights,
                        "neutrals": ctx.tg.neutrals, "explained": ctx.tg.explained}}
    path = folder / LAST_CHECKPOINT
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(data, tmp)
    return path


def _preset_dict(p: Preset) -> dict:
    d = asdict(p)
    d["model"] = asdict(p.model)
    return d


def _preset_from_checkpoint(ckpt: dict, p: Preset) -> Preset:
    d = dict(ckpt["preset"])
    d["model"] = A2MConfig.from_dict(d["model"])
    d["snr_db"] = tuple(d["snr_db"])
    saved = Preset(**d)
    return replace(saved, epochs=p.epochs)


def _split_from_checkpoint(ckpt: dict, clips: list[ClipData]) -> tuple[list[int], list[int]]:
    names = {c.source.name: i for i, c in enumerate(clips)}
    missing = [n for n in ckpt["split"]["train"] + ckpt["split"]["val"] if n not in names]
    if missing:
        raise InputError(f"the checkpoint was trained on clips that are not in --data now ({missing[0]}, ...)",
                         subject="--resume", remedy="resume with the same --data folders")
    return [names[n] for n in ckpt["split"]["train"]], [names[n] for n in ckpt["split"]["val"]]


def _targets_from_checkpoint(ckpt: dict, tg: Targets, clips: list[ClipData]) -> Targets:
    t = ckpt["targets"]
    tg = Targets(np.asarray(t["region"]), np.asarray(t["weights"]), np.asarray(t["basis"]),
                 {k: np.asarray(v) for k, v in t["neutrals"].items()}, float(t["explained"]))
    for c in clips:
        clip_targets(c, tg)
    return tg


def spread_gain(ctx: _Context, net) -> float:
    """The output gain that gives the training speakers' clips the real mouth-opening spread: 1 / the median
    over speakers of each speaker's median predicted/real spread (training clips only; 1 when off)."""
    if not ctx.p.calibrate_spread:
        return 1.0
    model = _model_for_eval(ctx, net, 1.0)
    by_spk: dict[str, list[float]] = {}
    for i in ctx.train_idx:
        c = ctx.clips[i]
        r = evaluate_clip(model, c, ctx.reference, ctx.tg.neutrals[c.source.speaker])
        if r and r["std_ratio"]:
            by_spk.setdefault(c.source.speaker, []).append(r["std_ratio"])
    if not by_spk:
        return 1.0
    ratio = float(np.median([np.median(v) for v in by_spk.values()]))
    return float(np.clip(1.0 / max(ratio, 1e-6), 1.0 / MAX_GAIN, MAX_GAIN))


MAX_GAIN = 3.0  # the spread calibration never scales the output by more than this (or less than its inverse)


def export(ctx: _Context, net, state: RunState, scales: dict, reporter: Reporter) -> Audio2Motion:
    """Calibrate the output gain, validate once more with it, and write config.json + model.safetensors
    (the last epoch's averaged weights) into the output folder."""
    gain = round(spread_gain(ctx, net), 4)
    ctx.cfg = replace(ctx.cfg, output_gain=gain)
    final = validate(ctx, net, scales, gain)
    if final:
        state.history[-1]["final"] = {k: v for k, v in final.items() if k != "val_clips"}
    reporter.info(f"output gain {gain:g} (training clips' mouth-opening spread)"
                  + (f"; validation: mouth-opening r {final['val_mouth_r']:.3f}, spread x{final['val_std_ratio']}"
                     if "val_mouth_r" in final else ""))
    model = _model_for_eval(ctx, net)
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "a2p_version": _version(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(ctx.opts).items()},
        "preset": _preset_dict(ctx.p),
        "data": _data_summary(ctx),
        "basis_explained": round(ctx.tg.explained, 4),
        "epochs": state.epoch,
        "steps": state.step,
        "output_gain": gain,
        "validation": final,
    }
    save_model(ctx.out, ctx.cfg, net.state_dict(), ctx.tg.basis, ctx.tg.region, model.silence_code, meta)
    model.meta = meta
    model.path = ctx.out
    return model


def _version() -> str:
    from a2pcli import __version__

    return __version__


def _data_summary(ctx: _Context) -> dict:
    def part(idx):
        spk = sorted({ctx.clips[i].source.speaker for i in idx})
        return {"clips": len(idx), "speakers": len(spk), "seconds": round(sum(ctx.clips[i].duration for i in idx), 1),
                "speaker_names": spk}

    return {"train": {**part(ctx.train_idx), "effective_seconds": round(sum(ctx.cw.values()), 1)},
            "val": part(ctx.val_idx), "data_folders": [str(d) for d in ctx.opts.data]}


def _data_line(clips, train_idx, val_idx, cw, tg) -> str:
    spk_t = len({clips[i].source.speaker for i in train_idx})
    spk_v = len({clips[i].source.speaker for i in val_idx})
    sec_t = sum(clips[i].duration for i in train_idx)
    sec_v = sum(clips[i].duration for i in val_idx)
    return (f"data: train {len(train_idx)} clips / {spk_t} speakers / {sec_t:.0f} s (sampled as {sum(cw.values()):.0f} s), "
            f"val {len(val_idx)} clips / {spk_v} speakers / {sec_v:.0f} s; basis keeps {100 * tg.explained:.1f}% "
            f"of the lower-face motion")


def _epoch_line(row: dict, epochs: int) -> str:
    s = (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f} (codes {row['train_codes']:.3f}, "
         f"gap {row['train_gap']:.3f}, velocity {row['train_velocity']:.3f}, corr {row['train_corr']:.3f})")
    if "val_loss_codes" in row:
        s += f"; val codes {row['val_loss_codes']:.3f}"
    if "val_mouth_r" in row:
        s += (f", mouth-opening r {row['val_mouth_r']:.3f} (envelope {row['val_envelope_r']:.3f}), "
              f"spread x{row['val_std_ratio']}")
    return s + f"; {row['seconds']:.0f} s"


def _append_log(out: Path, row: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def _speaker_map(data: tuple[Path, ...]) -> dict[str, str] | None:
    """Speakers from a `speakers.tsv` (file name <tab> speaker) in a data folder, when there is one."""
    mapping = {}
    for root in data:
        path = Path(root) / "speakers.tsv"
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] and not line.startswith("#"):
                    mapping[parts[0]] = parts[1]
    return mapping or None


def _summary(ctx: _Context, state: RunState, model: Audio2Motion, t0: float, choice) -> dict:
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
        "validation": model.meta.get("validation", {}),
        "output_gain": model.config.output_gain,
        "parameters": int(sum(p.numel() for p in model.net.parameters())),
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


# --- evaluation of a finished model (the numbers in the model card) -------------------------------------


def evaluate_model(model: Audio2Motion, data: list[Path], cache_dir: Path, speakers: set[str] | None = None,
                   reporter: Reporter | None = None) -> list[dict]:
    """Per-clip mouth-opening agreement (see evaluate_clip) on the clips of `speakers` (all when None)
    under the data folders; landmarks and features come from (and go to) `cache_dir`."""
    from a2pcli.headpose import load_reference

    reporter = reporter or Reporter()
    sources = [s for s in find_sources(data, _speaker_map(tuple(data))) if speakers is None or s.speaker in speakers]
    clips = prepare_all(sources, cache_dir, None, reporter)
    neutrals = speaker_neutrals(clips)
    reference = load_reference().mean
    rows = [evaluate_clip(model, c, reference, neutrals[c.source.speaker]) for c in clips]
    return [r for r in rows if r]


PAUSE_LOUD_DB, PAUSE_QUIET_DB = 15.0, 35.0  # frames within / further than this below the speech level
PAUSE_MIN_S = 0.25  # quiet stretches shorter than this (gaps inside words) do not count as pauses


def _long_runs(mask: np.ndarray, min_len: int) -> np.ndarray:
    """mask with its True runs shorter than min_len cleared."""
    out = np.zeros_like(mask)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a >= min_len:
            out[a:b] = True
    return out


def pause_check(model: Audio2Motion, audio: np.ndarray, fps: float = 25.0) -> dict:
    """Mean mouth opening (above the closed mouth, face units) on loud frames (speech) and on quiet
    frames (pauses) of one utterance: the mouth should open in speech and close in pauses."""
    from a2pcli.headpose import load_reference

    ref = load_reference().mean
    delta = model.predict(audio, fps)
    opening = mouth_opening(ref + delta) - mouth_opening(ref)
    level = features.frame_level_db(features.log_mel(audio))
    speech_db = float(np.percentile(level, features.LEVEL_PERCENTILE))
    at = np.clip(np.round(np.arange(len(delta)) / fps * features.FRAME_RATE).astype(np.int64), 0, len(level) - 1)
    lv = level[at]
    loud = lv >= speech_db - PAUSE_LOUD_DB
    quiet = _long_runs(lv <= speech_db - PAUSE_QUIET_DB, int(round(PAUSE_MIN_S * fps)))
    return {"seconds": round(len(audio) / features.SAMPLE_RATE, 2),
            "loud_share": round(float(loud.mean()), 3), "pause_share": round(float(quiet.mean()), 3),
            "open_loud": round(float(opening[loud].mean()), 4) if loud.any() else None,
            "open_pause": round(float(opening[quiet].mean()), 4) if quiet.any() else None}


def main(argv: list[str] | None = None) -> int:
    """python -m a2pcli.train_a2m evaluate MODEL --data DIR... [--speakers A,B] [--cache DIR]
    python -m a2pcli.train_a2m pauses MODEL FILE...      (JSON lines on stdout)"""
    import argparse

    from a2pcli.audio2motion import load_model

    ap = argparse.ArgumentParser(prog="python -m a2pcli.train_a2m")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("evaluate", help="mouth-opening correlation and spread on held-out talking clips")
    ev.add_argument("model")
    ev.add_argument("--data", type=Path, action="append", required=True)
    ev.add_argument("--speakers", default=None)
    ev.add_argument("--cache", type=Path, default=None)
    pa = sub.add_parser("pauses", help="mouth opening in speech vs pauses of speech files")
    pa.add_argument("model")
    pa.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    if args.cmd == "evaluate":
        spk = set(args.speakers.split(",")) if args.speakers else None
        cache_dir = args.cache or Path(args.model) / "cache"
        rows = evaluate_model(model, args.data, cache_dir, spk)
        for r in rows:
            print(json.dumps(r))
        print(json.dumps({"summary": summarise(rows)}))
    else:
        from a2pcli.audio import load_audio

        for f in args.files:
            print(json.dumps({"file": f.name, **pause_check(model, load_audio(f, features.SAMPLE_RATE))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
