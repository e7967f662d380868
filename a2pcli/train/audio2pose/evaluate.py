"""Motion statistics of held-out clips, real against generated, measured alike: per-axis spread and speed of
yaw, pitch and roll (smoothed by MEASURE_SMOOTH_S, the landmark jitter out of both), and the correlation of
head speed with the speech: its onsets (rises of loudness) and its pitch accents (stress); for the model
(several seeds), a control (the model driven by other clips' speech) and the hand-made rule
(a2pcli.talk.rule_head). What validation logs each epoch and what benchmarks/eval_headpose.py reports."""

from __future__ import annotations

import math

import numpy as np

from a2pcli import features
from a2pcli.audio2pose import INPUT_STRIDE, Audio2PoseModel, gaussian_smooth
from a2pcli.train.audio2pose.batches import clip_inputs
from a2pcli.train.audio2pose.data import PoseClip
from a2pcli.train.audio2pose.targets import JUMP_DEG, MEASURE_SMOOTH_S, runs

MIN_VAL_FRAMES = 25  # held-out segments shorter than this are not scored
CONTROL_CLIPS = 3  # the control drives the model with the speech of this many other clips (each seed)
ONSET_SMOOTH_S = 0.2  # onset strength and head speed are compared at this time resolution (about a syllable)
ACCENT_CONTEXT_S = 1.0  # a pitch accent is pitch above its median over this much speech on each side
ACCENT_VOICED = 0.3  # share of a video frame's feature frames that must be voiced for it to carry a pitch
SPEECH_SIGNALS = ("onset", "accent")  # what head speed is correlated with: {who}_{signal}_r in the rows


def measure(euler: np.ndarray, fps: float) -> np.ndarray:
    """(T, 3) degrees -> (T, 3) as the metrics see it: smoothed by MEASURE_SMOOTH_S (landmark jitter)."""
    return gaussian_smooth(np.asarray(euler, np.float32), MEASURE_SMOOTH_S * fps)


def motion_stats(euler: np.ndarray, fps: float) -> dict:
    """Per-axis standard deviation (degrees) and mean absolute velocity (degrees/s) of (T, 3) yaw, pitch,
    roll, measured alike for real and generated motion (see measure)."""
    e = measure(euler, fps)
    vel = np.abs(np.diff(e, axis=0)).mean(0) * fps if len(e) > 1 else np.zeros(3)
    return {"std": [round(float(v), 3) for v in e.std(0)], "velocity": [round(float(v), 3) for v in vel]}


def onset_strength(logmel: np.ndarray, fps: float, n: int) -> np.ndarray:
    """(n,) speech onsets per video frame: the rise of the loudness (dB per 10 ms, positive part), summed over
    each frame and smoothed by ONSET_SMOOTH_S."""
    level = gaussian_smooth(features.frame_level_db(logmel)[:, None], 2.0)[:, 0]
    rise = np.clip(np.diff(level, prepend=level[:1]), 0, None)
    cum = np.concatenate([[0.0], np.cumsum(rise)])
    edges = np.clip(np.round(np.arange(n + 1) / fps * features.FRAME_RATE).astype(np.int64), 0, len(rise))
    per_frame = (cum[edges[1:]] - cum[edges[:-1]]).astype(np.float32)
    return gaussian_smooth(per_frame[:, None], ONSET_SMOOTH_S * fps)[:, 0]


def accent_strength(prosody_rows: np.ndarray, fps: float, n: int) -> np.ndarray:
    """(n,) pitch accents per video frame: how far the voiced pitch rises above its median over the
    surrounding ACCENT_CONTEXT_S on each side (octaves, positive part; 0 where unvoiced), smoothed by
    ONSET_SMOOTH_S. Stressed syllables carry pitch accents; loudness alone (the onsets, and what the
    hand-made rule follows) does not see them."""
    from a2pcli import prosody

    pitch = prosody_rows[:, 1].astype(np.float64)
    voiced = prosody_rows[:, 2] > prosody.VOICED
    edges = np.clip(np.round(np.arange(n + 1) / fps * features.FRAME_RATE).astype(np.int64), 0, len(pitch))
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    vsum = np.concatenate([[0.0], np.cumsum(voiced)])
    psum = np.concatenate([[0.0], np.cumsum(np.where(voiced, pitch, 0.0))])
    vframes = vsum[edges[1:]] - vsum[edges[:-1]]
    per_frame = np.where(vframes / cnt > ACCENT_VOICED, (psum[edges[1:]] - psum[edges[:-1]]) / np.maximum(vframes, 1),
                         np.nan)
    half = max(1, int(round(ACCENT_CONTEXT_S * fps)))
    acc = np.zeros(n, np.float32)
    for i in np.flatnonzero(np.isfinite(per_frame)):
        acc[i] = max(0.0, per_frame[i] - float(np.nanmedian(per_frame[max(0, i - half): i + half])))
    return gaussian_smooth(acc[:, None], ONSET_SMOOTH_S * fps)[:, 0]


def head_speed(euler: np.ndarray, fps: float) -> np.ndarray:
    """(T,) angular speed (degrees/s, the norm over yaw, pitch, roll) of measured motion, smoothed like the onsets."""
    e = measure(euler, fps)
    v = np.linalg.norm(np.gradient(e, axis=0), axis=1) * fps if len(e) > 1 else np.zeros(len(e))
    return gaussian_smooth(v[:, None].astype(np.float32), ONSET_SMOOTH_S * fps)[:, 0]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a**2).sum() * (b**2).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def speed_r(euler: np.ndarray, signal: np.ndarray, fps: float) -> float:
    """Pearson correlation of head speed with a per-frame speech signal (onsets, accents) over the common frames."""
    n = min(len(euler), len(signal))
    return _corr(head_speed(euler[:n], fps), signal[:n]) if n > 2 else 0.0


def held_out_motion(clip: PoseClip) -> list[tuple[int, int, np.ndarray]]:
    """The clip's scored stretches in its own video frames: (first, stop, (L, 3) real yaw/pitch/roll, raw)."""
    ok = clip.valid.copy()
    if len(ok) > 1:
        jump = np.abs(np.diff(clip.pose[:, :3], axis=0)).max(1) > JUMP_DEG
        ok[1:] &= ~jump
        ok[:-1] &= ~jump
    n = min(len(ok), int(len(clip.logmel) / features.FRAME_RATE * clip.fps))
    return [(a, b, clip.pose[a:b, :3]) for a, b in runs(ok[:n]) if b - a >= MIN_VAL_FRAMES]


def evaluate_clips(model: Audio2PoseModel, clips: list[PoseClip], seeds: int, rule: bool = False) -> list[dict]:
    """Per held-out clip: the real motion's spread, speed and correlations of head speed with the speech
    (onsets, pitch accents: SPEECH_SIGNALS), and the same for the model's motion (mean over `seeds` seeds),
    for the model driven by other clips' speech (the control: CONTROL_CLIPS others, looped to the length,
    scored against this clip's speech), and, with `rule`, for the hand-made rule (a2pcli.talk.rule_head)."""
    rows = []
    for k, c in enumerate(clips):
        spans = held_out_motion(c)
        if not spans:
            continue
        n = min(len(c.pose), int(len(c.logmel) / features.FRAME_RATE * c.fps))
        signals = {"onset": onset_strength(c.logmel, c.fps, n), "accent": accent_strength(c.prosody, c.fps, n)}
        gen = [_generate(model, clip_inputs(c, None, None), c.fps, n, s) for s in range(seeds)]
        others = [clips[(k + j) % len(clips)] for j in range(1, min(CONTROL_CLIPS, len(clips) - 1) + 1)] or [c]
        ctrl = [_generate(model, _loop_inputs(clip_inputs(o, None, None), n / c.fps), c.fps, n, s)
                for s in range(seeds) for o in others]
        row = {"clip": c.name, "speaker": c.speaker, "seconds": round(sum(b - a for a, b, _ in spans) / c.fps, 2)}
        row.update(_score("real", [[e for _, _, e in spans]], spans, signals, c.fps))
        row.update(_score("model", [[g[a:b] for a, b, _ in spans] for g in gen], spans, signals, c.fps))
        row.update(_score("control", [[g[a:b] for a, b, _ in spans] for g in ctrl], spans, signals, c.fps))
        if rule:
            from a2pcli.talk import rule_head

            db = _loudness_from_logmel(c.logmel, c.fps, n)
            rules = [rule_head(db, c.fps, np.random.default_rng(s)) for s in range(seeds)]
            row.update(_score("rule", [[g[a:b] for a, b, _ in spans] for g in rules], spans, signals, c.fps))
        rows.append(row)
    return rows


def _loudness_from_logmel(logmel: np.ndarray, fps: float, n: int) -> np.ndarray:
    """(n,) per-frame loudness in dB as a2pcli.talk.loudness gives it, from the log-mel (for clips whose
    samples are not at hand): the mean power of the feature frames under each video frame."""
    power = np.exp(features.frame_level_db(logmel) / features.DB_PER_NEPER) / 2.0  # full-scale sine -> mean square
    cum = np.concatenate([[0.0], np.cumsum(power)])
    edges = np.clip(np.round(np.arange(n + 1) / fps * features.FRAME_RATE).astype(np.int64), 0, len(power))
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    ms = (cum[edges[1:]] - cum[edges[:-1]]) / cnt
    return np.maximum(10 * np.log10(ms + 1e-8), -80.0).astype(np.float32)


def _loop_inputs(inputs: np.ndarray, seconds: float) -> np.ndarray:
    """Speech inputs repeated (or cut) to cover `seconds`."""
    need = int(math.ceil(seconds * features.FRAME_RATE)) + INPUT_STRIDE
    return np.concatenate([inputs] * int(math.ceil(need / max(len(inputs), 1))))[:need]


def _generate(model: Audio2PoseModel, inputs: np.ndarray, fps: float, n: int, seed: int) -> np.ndarray:
    """(n, 3) yaw, pitch, roll the model generates from speech inputs, at `fps` (the path of Audio2PoseModel.generate
    after its feature step)."""
    from a2pcli.audio2pose import resample

    motion = model.from_normalised(model.generate_normalised(inputs, seed))
    return resample(motion, fps, n)[:, :3]


def _score(prefix: str, draws: list[list[np.ndarray]], spans, signals: dict[str, np.ndarray], fps: float) -> dict:
    """Mean over runs (seeds) of the frame-weighted per-axis std, velocity and the correlation of head speed
    with each speech signal over the spans."""
    std, vel, rs = [], [], {k: [] for k in signals}
    w = np.array([b - a for a, b, _ in spans], np.float64)
    for run in draws:
        st = [motion_stats(e, fps) for e in run]
        std.append(np.average([s["std"] for s in st], axis=0, weights=w))
        vel.append(np.average([s["velocity"] for s in st], axis=0, weights=w))
        for k, sig in signals.items():
            rs[k].append(np.average([speed_r(e, sig[a:b], fps) for e, (a, b, _) in zip(run, spans)], weights=w))
    out = {f"{prefix}_std": [round(float(v), 3) for v in np.mean(std, 0)],
           f"{prefix}_velocity": [round(float(v), 3) for v in np.mean(vel, 0)]}
    out.update({f"{prefix}_{k}_r": round(float(np.mean(v)), 4) for k, v in rs.items()})
    return out


def summarise(rows: list[dict]) -> dict:
    """Averages over clips; ratios of the model's (and the rule's) spread and speed to the real clips'."""
    if not rows:
        return {}
    out = {"clips": len(rows)}
    for who in ("real", "model", "control", "rule"):
        if f"{who}_std" not in rows[0]:
            continue
        out[f"{who}_std"] = [round(float(v), 3) for v in np.mean([r[f"{who}_std"] for r in rows], 0)]
        out[f"{who}_velocity"] = [round(float(v), 3) for v in np.mean([r[f"{who}_velocity"] for r in rows], 0)]
        for k in SPEECH_SIGNALS:
            if f"{who}_{k}_r" in rows[0]:
                out[f"{who}_{k}_r"] = round(float(np.mean([r[f"{who}_{k}_r"] for r in rows])), 4)
    for who in ("model", "rule"):
        if f"{who}_std" in out:
            out[f"{who}_std_ratio"] = [round(a / max(b, 1e-9), 3) for a, b in zip(out[f"{who}_std"], out["real_std"])]
            out[f"{who}_velocity_ratio"] = [round(a / max(b, 1e-9), 3)
                                            for a, b in zip(out[f"{who}_velocity"], out["real_velocity"])]
    return out

