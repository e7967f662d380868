"""How well an audio2motion model's mouth follows real talking clips: per clip, the correlation of the
predicted mouth opening with the real one, against a loudness-envelope baseline, and the spread ratio.
Used for validation during training, the output-gain calibration, and the model card's numbers
(`evaluate_model`, `pause_check`; benchmarks/eval_audio2motion.py runs them)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from a2pcli import features
from a2pcli.audio2motion import INPUT_STRIDE, A2MConfig, Audio2Motion
from a2pcli.landmarks import mouth_opening
from a2pcli.progress import Reporter
from a2pcli.train.audio2motion.context import Context
from a2pcli.train.audio2motion.data import ClipData, prepare
from a2pcli.train.audio2motion.targets import speaker_neutrals
from a2pcli.train.clips import find_sources, speaker_map

MIN_VAL_FRAMES = 25  # validation clips shorter than this (valid frames) are skipped in the metrics
ENVELOPE_WINDOW_S = 0.04  # the loudness-envelope baseline: RMS over this window around each frame
SPREAD_OK = (0.6, 1.5)  # predicted / real mouth-opening spread counted as right
MAX_GAIN = 3.0  # the spread calibration never scales the output by more than this (or less than its inverse)
PAUSE_LOUD_DB, PAUSE_QUIET_DB = 15.0, 35.0  # frames within / further than this below the speech level
PAUSE_MIN_S = 0.25  # quiet stretches shorter than this (gaps inside words) do not count as pauses


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
    codes = model.codes_from_logmel(clip.logmel)
    delta = model.expand(resample_codes(codes, clip.fps, n))
    pred = mouth_opening(reference + neutral + delta)[valid]
    real = clip.opening[:n][valid]
    env = loudness_envelope(clip.logmel, clip.fps, n)[valid]
    sd_real = float(real.std())
    return {"clip": clip.source.name, "speaker": clip.source.speaker, "seconds": round(n / clip.fps, 2),
            "r": round(_corr(pred, real), 4), "envelope_r": round(_corr(env, real), 4),
            "std_ratio": round(float(pred.std()) / sd_real, 3) if sd_real > 0 else None,
            "real_std": round(sd_real, 4), "pred_std": round(float(pred.std()), 4)}


def summarise(rows: list[dict]) -> dict:
    """Means over the clips of evaluate_clip's rows."""
    if not rows:
        return {}
    ratios = [r["std_ratio"] for r in rows if r["std_ratio"] is not None]
    return {"clips": len(rows), "mouth_opening_r": round(float(np.mean([r["r"] for r in rows])), 4),
            "envelope_r": round(float(np.mean([r["envelope_r"] for r in rows])), 4),
            "std_ratio": round(float(np.mean(ratios)), 3) if ratios else None,
            "std_ratio_in_range": int(sum(SPREAD_OK[0] <= x <= SPREAD_OK[1] for x in ratios))}


# --- during training -----------------------------------------------------------------------------------------


def silence_code(net, cfg: A2MConfig, device: str) -> np.ndarray:
    """The net's raw output in the middle of a stretch of silence."""
    from a2pcli.audio2motion import run_network

    feats = np.full((4 * INPUT_STRIDE * cfg.context_codes + 8, cfg.n_mels), features.FLOOR, np.float32)
    codes = run_network(net, feats, cfg, device)
    return codes[len(codes) // 2].astype(np.float32)


def model_for_eval(ctx: Context, net, gain: float | None = None) -> Audio2Motion:
    """The network in training wrapped as an inference model (the same predict path as `a2p audio2video`)."""
    net.eval()
    silence = silence_code(net, ctx.cfg, ctx.device)
    cfg = ctx.cfg if gain is None else replace(ctx.cfg, output_gain=gain)
    return Audio2Motion(cfg, net, ctx.tg.basis, ctx.tg.region, silence, {}, ctx.device)


def validate(ctx: Context, net, scales: dict, gain: float | None = None) -> dict:
    """Loss and mouth-opening metrics on the whole held-out clips."""
    if not ctx.val_idx:
        return {}
    model = model_for_eval(ctx, net, gain)
    rows, se, n = [], 0.0, 0
    for i in ctx.val_idx:
        c = ctx.clips[i]
        codes = model.codes_from_logmel(c.logmel)
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


def spread_gain(ctx: Context, net) -> float:
    """The output gain that gives the training speakers' clips the real mouth-opening spread: 1 / the median
    over speakers of each speaker's median predicted/real spread (training clips only; 1 when off)."""
    if not ctx.p.calibrate_spread:
        return 1.0
    model = model_for_eval(ctx, net, 1.0)
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


# --- a finished model --------------------------------------------------------------------------------------


def evaluate_model(model: Audio2Motion, data: list[Path], cache_dir: Path, speakers: set[str] | None = None,
                   reporter: Reporter | None = None) -> list[dict]:
    """Per-clip mouth-opening agreement (see evaluate_clip) on the clips of `speakers` (all when None)
    under the data folders; landmarks and features come from (and go to) `cache_dir`."""
    from a2pcli.headpose import load_reference

    reporter = reporter or Reporter()
    sources = [s for s in find_sources(data, speaker_map(tuple(data))) if speakers is None or s.speaker in speakers]
    clips = prepare(sources, cache_dir, None, reporter)
    neutrals = speaker_neutrals(clips)
    reference = load_reference().mean
    rows = [evaluate_clip(model, c, reference, neutrals[c.source.speaker]) for c in clips]
    return [r for r in rows if r]


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
