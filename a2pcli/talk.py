"""Speech -> face motion for one portrait: lips from the audio2motion model, head motion from the
audio2pose model (or a template, or the hand-made rule), blinks and breathing, as target landmarks for the
renderer.

    head = audio2pose.load_model().generate(audio16k, fps, n, seed)       # or None: --still, --pose, rule
    tgt, notes = talk_targets(face, audio16k, fps, n, lips, TalkOptions(), ref_mean, head_motion=head)

Everything here is cheap next to rendering (a few ms per second of video). `rule_head` is the hand-made
head motion (`--head rule`): a sum of seeded slow sinusoids shaped by the speech's loudness, smaller and
calmer than a real talker's; it needs no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli import facemesh as fm
from a2pcli.audio import SAMPLE_RATE
from a2pcli.headpose import apply_pose
from a2pcli.motion import Motion
from a2pcli.retarget import FaceTargets, PortraitFace, expression_weights, no_crossing, rotation_power

# A blink: the lids close in about 80 ms, stay shut for a frame or so, and reopen more slowly (real blinks
# last 100-400 ms, the closing phase the quickest).
BLINK_CLOSE_S, BLINK_SHUT_S, BLINK_OPEN_S = 0.08, 0.04, 0.17
BLINK_MIN_GAP_S = 1.2
BLINK_REGULARITY = 4.0  # gamma shape of the intervals between blinks: 1 is a Poisson process, larger is more even
PAUSE_BOOST = 3.0  # blinks are this many times likelier in a pause of the speech (or at its edges) than in speech
PAUSE_BELOW_DB = 25.0  # a pause: this far below the speech's loud frames (its 90th percentile of loudness)
PAUSE_MIN_S = 0.25  # ... lasting at least this long (not the gap before a stop consonant)
PAUSE_SMOOTH_S = 0.15  # the pause weight spreads this far into the speech on either side: phrase boundaries
BREATH_HZ, BREATH_UNITS = 0.22, 0.006  # a slow rise and fall of the head, face units
# the hand-made head motion (rule_head): amplitude (degrees) of yaw, pitch, roll wander, and of the nods on
# stressed speech
WANDER_DEG = np.array([3.2, 2.0, 1.3])
WANDER_HZ = (0.07, 0.45)
NOD_DEG = 2.2
CROSSFADE_S = 0.5  # template loops: cross-faded joins
HEAD_MODEL, HEAD_RULE = "audio2pose", "rule"  # TalkOptions.head: the shipped model, or the hand-made rule
TARGET_CHUNK = 1000  # frames of target landmarks computed at a time (bounded temporaries for any length)


@dataclass(frozen=True)
class TalkOptions:
    template: Path | None = None  # head motion from a .pose / .npy instead of generating it
    head: str = HEAD_MODEL  # generated head motion: "audio2pose", a registry name or a model folder, or "rule"
    template_region: str = "pose"  # pose, pose+eyes, pose+eyes+brows
    still: bool = False
    pose_scale: float = 1.0
    expression_scale: float = 1.0
    blink_rate: float = 17.0  # per minute: a typical adult's spontaneous blink rate in conversation
    seed: int = 0  # blinks and generated head motion (a pipeline job passes its own seed)


def loudness(audio: np.ndarray, fps: float, n: int) -> np.ndarray:
    """Per video frame RMS loudness in dB (T,), -80 for silence."""
    hop = SAMPLE_RATE / fps
    out = np.full(n, -80.0, np.float32)
    for i in range(n):
        a, b = int(i * hop), int((i + 1) * hop)
        seg = audio[a:b]
        if len(seg):
            out[i] = 10 * np.log10(float(np.mean(seg.astype(np.float64) ** 2)) + 1e-8)
    return np.maximum(out, -80.0)


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, pad)


def blink_seed(seed: int, audio: np.ndarray, image: np.ndarray | None = None) -> np.random.SeedSequence:
    """The blinks' random stream: the seed mixed with a hash of the speech samples and of the portrait's pixels,
    so different clips blink at different times and the same inputs with the same seed blink identically."""
    import hashlib

    def digest(a: np.ndarray) -> int:
        return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).digest(), "little")

    keys = [int(seed) & (2**64 - 1), digest(audio)] + ([digest(image)] if image is not None else [])
    return np.random.SeedSequence(keys)


def pause_weight(audio_db: np.ndarray, fps: float) -> np.ndarray:
    """(T,) how much likelier a blink is at each frame: 1 in speech, 1 + PAUSE_BOOST in pauses and at their
    edges (phrase boundaries); all ones for silence or a constant level."""
    speech = float(np.percentile(audio_db, 90)) if len(audio_db) else -80.0
    if speech <= -60.0:  # no speech: blinks at an even rate
        return np.ones(len(audio_db), np.float32)
    pause = _runs_at_least(audio_db < speech - PAUSE_BELOW_DB, int(round(PAUSE_MIN_S * fps))).astype(np.float64)
    pause = np.clip(_smooth(pause, PAUSE_SMOOTH_S * fps) * 2.0, 0.0, 1.0)
    return (1.0 + PAUSE_BOOST * pause).astype(np.float32)


def _runs_at_least(mask: np.ndarray, length: int) -> np.ndarray:
    """`mask` (T,) bool with its runs of True shorter than `length` frames removed."""
    out = np.zeros_like(mask)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a >= length:
            out[a:b] = True
    return out


def blink_times(n: int, fps: float, rate_per_min: float, rng: np.random.Generator,
                audio_db: np.ndarray | None = None) -> np.ndarray:
    """Frame indices (ascending) of blink peaks: a renewal process with gamma-distributed intervals around
    `rate_per_min`, run on a clock that goes faster in the speech's pauses (pause_weight), so blinks gather at
    pauses and phrase boundaries while keeping the average rate; at least BLINK_MIN_GAP_S apart."""
    if rate_per_min <= 0 or n == 0:
        return np.zeros(0, np.int64)
    weight = pause_weight(audio_db, fps) if audio_db is not None else np.ones(n, np.float32)
    weight = weight / weight.mean()
    clock = np.concatenate([[0.0], np.cumsum(weight) / fps * rate_per_min / 60.0])  # expected blinks so far
    t_frames = np.arange(n + 1) / fps
    peaks: list[int] = []
    c = rng.uniform(0.1, 0.9)  # the first blink: somewhere in the first interval
    last = -np.inf
    while c < clock[-1]:
        t = max(float(np.interp(c, clock, t_frames)), last + BLINK_MIN_GAP_S, BLINK_CLOSE_S)
        f = int(round(t * fps))
        if f >= n:
            break
        peaks.append(f)
        last = f / fps
        c = max(c, float(np.interp(last, t_frames, clock))) + rng.gamma(BLINK_REGULARITY, 1.0 / BLINK_REGULARITY)
    return np.array(peaks, np.int64)


def blink_schedule(audio: np.ndarray, fps: float, n: int, opts: TalkOptions, image: np.ndarray | None = None
                   ) -> np.ndarray:
    """Frame indices of the blink peaks talk_targets gives these inputs (seed, speech and portrait pixels)."""
    rng = np.random.default_rng(blink_seed(opts.seed, audio, image))
    return blink_times(n, fps, opts.blink_rate, rng, loudness(audio, fps, n))


def blink_curve(n: int, fps: float, peaks: np.ndarray) -> np.ndarray:
    """(T,) eyelid closure 0..1 with a blink peaking at each frame of `peaks`: a quick close, a frame or so
    shut (1.0 on the peak frame at any frame rate), a slower reopening."""
    closure = np.zeros(n, np.float32)
    t = np.arange(n) / fps
    for p in peaks:
        d = t - p / fps
        shut = np.abs(d - BLINK_SHUT_S / 2) <= BLINK_SHUT_S / 2
        closing = np.clip(1 + d / BLINK_CLOSE_S, 0, 1) * (d < 0)
        opening = np.clip(1 - (d - BLINK_SHUT_S) / BLINK_OPEN_S, 0, 1) * (d > BLINK_SHUT_S)
        shape = np.maximum.reduce([shut.astype(np.float64), closing**2 * (3 - 2 * closing),
                                   opening**2 * (3 - 2 * opening)])
        closure = np.maximum(closure, shape.astype(np.float32))
    return closure


def blink_delta(canon: np.ndarray, closure: np.ndarray) -> np.ndarray:
    """(T, 478, 3) canonical deltas that lower each upper lid onto the lower one by `closure`."""
    delta = np.zeros((len(closure), *canon.shape), np.float32)
    for upper, lower, ring in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER, fm.RIGHT_EYE_RING_UPPER),
                               (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER, fm.LEFT_EYE_RING_UPPER)):
        gap = canon[lower[1:-1], 1] - canon[upper[1:-1], 1]  # per inner lid point
        delta[:, upper[1:-1], 1] = closure[:, None] * gap[None] * 0.92
        delta[:, lower[1:-1], 1] = -closure[:, None] * gap[None] * 0.04
        delta[:, ring, 1] = closure[:, None] * float(gap.mean()) * 0.3
    return delta


def rule_head(audio_db: np.ndarray, fps: float, rng: np.random.Generator) -> np.ndarray:
    """The hand-made head motion: (T, 3) yaw, pitch, roll degrees: slow seeded wander, livelier while
    speaking, small nods on stressed syllables; zero-mean, no drift."""
    n = len(audio_db)
    t = np.arange(n) / fps
    euler = np.zeros((n, 3), np.float64)
    for axis in range(3):
        for _ in range(4):
            f = rng.uniform(*WANDER_HZ)
            euler[:, axis] += rng.normal(0, 1) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        euler[:, axis] *= WANDER_DEG[axis] / 2.0
    speaking = np.clip((_smooth(audio_db, 0.3 * fps) + 50) / 25, 0, 1)  # 0 in silence, 1 in normal speech
    euler *= (0.45 + 0.55 * speaking)[:, None]
    # nods: the loudness rising fast (stressed syllables) dips the head a little
    rise = np.clip(np.diff(_smooth(audio_db, 0.05 * fps), prepend=audio_db[:1]), 0, None)
    euler[:, 1] += NOD_DEG * _smooth(np.clip(rise / 6.0, 0, 1), 0.12 * fps)
    return euler.astype(np.float32)


def _loop(x: np.ndarray, n: int, fps: float) -> np.ndarray:
    """A template's frames extended to n: played forward and backward (ping-pong), so every join is
    continuous, with a short cross-fade to soften the turn-around."""
    if len(x) >= n:
        return x[:n]
    if len(x) == 1:
        return np.repeat(x, n, 0)
    cycle = np.concatenate([x, x[-2:0:-1]])
    reps = int(np.ceil(n / len(cycle)))
    out = np.concatenate([cycle] * reps)[:n]
    k = max(1, int(CROSSFADE_S * fps / 2))
    return _smooth(out, k / 3.0) if len(out) > 3 * k else out


def template_motion(motion: Motion, n: int, fps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Relative rotation (T, 3, 3), translation in face units (T, 3) and expression deltas (T, 478, 3) or None,
    from a template, resampled to fps and extended to n frames."""
    m = len(motion)
    src_t = np.arange(int(round(m * fps / motion.fps))) * motion.fps / fps
    idx = np.clip(np.round(src_t).astype(int), 0, m - 1)
    rel = (motion.rotation @ motion.rotation[0].T)[idx]
    if motion.frame_size == (0, 0) or motion.landmarks is None:
        shift = motion.translation - motion.translation[0]
    else:
        shift = (motion.translation - motion.translation[0]) / np.maximum(motion.scale[:, None], 1e-6)
    shift = shift[idx]
    expr = None
    if motion.expression is not None:
        expr = (motion.expression - motion.expression[0])[idx]
    rel = _loop(rel, n, fps)
    u, _, vt = np.linalg.svd(rel)
    rel = (u @ vt).astype(np.float32)
    shift = _loop(shift, n, fps).astype(np.float32)
    shift[:, 2] = 0
    if expr is not None:
        expr = _loop(expr, n, fps).astype(np.float32)
    return rel, shift, expr


def uses_head_model(opts: TalkOptions) -> bool:
    """Whether the head motion comes from an audio2pose model (not --still, --pose or the rule)."""
    return not opts.still and opts.template is None and opts.head != HEAD_RULE


def talk_targets(face: PortraitFace, audio: np.ndarray, fps: float, n: int, lips: np.ndarray, opts: TalkOptions,
                 ref_mean: np.ndarray, template: Motion | None = None, rest: np.ndarray | None = None,
                 head_motion: np.ndarray | None = None, image: np.ndarray | None = None
                 ) -> tuple[FaceTargets, list[str]]:
    """Target landmarks and pose for n frames of speech. `lips`: (n, 478, 3) expression deltas from the
    audio2motion model; `rest`: (478, 3) delta from the portrait to the closed mouth they are relative to
    (mouth.closed_rest), None for a portrait whose mouth is closed; `head_motion`: (n, 5) yaw, pitch, roll
    (degrees), x, y (face units) relative to the portrait, from audio2pose.Audio2PoseModel.generate (used without
    --still or a template; None there: the hand-made rule); `image`: the portrait's pixels, which (with the seed
    and the speech) decide when it blinks (blink_seed)."""
    notes: list[str] = []
    rng = np.random.default_rng(opts.seed)
    db = loudness(audio, fps, n)
    closure = blink_curve(n, fps, blink_schedule(audio, fps, n, opts, image))
    expr = expr_w = None  # the template's expression and where it applies (--template-region)

    shift = np.zeros((n, 3), np.float32)
    if opts.still:
        rel = np.repeat(np.eye(3, dtype=np.float32)[None], n, 0)
    elif template is not None:
        rel, shift, expr = template_motion(template, n, fps)
        if opts.template_region != "pose":
            if expr is None:
                notes.append("the template has no expression (an AniPortrait head-pose template): "
                             "--template-region uses its head motion only")
            else:
                w = expression_weights(ref_mean, "eyes")
                if opts.template_region == "pose+eyes+brows":
                    brows = np.zeros_like(w)
                    brows[np.concatenate([fm.RIGHT_BROW, fm.LEFT_BROW, fm.FOREHEAD])] = 1.0
                    w = np.maximum(w, brows)
                lips_w = expression_weights(ref_mean, "lips")
                expr_w = (w * (1 - lips_w))[None, :, None]  # the lips always follow the speech
        if len(template) * fps / template.fps < n:
            notes.append("the head-motion template is shorter than the audio: it is played back and forth")
    elif head_motion is not None:
        from a2pcli.headpose import matrix_from_euler

        if head_motion.shape != (n, 5) or not np.isfinite(head_motion).all():
            raise ValueError(f"head_motion must be ({n}, 5) finite values, got {head_motion.shape}")
        rel = matrix_from_euler(head_motion[:, :3])
        shift[:, :2] = head_motion[:, 3:5]
    else:
        from a2pcli.headpose import matrix_from_euler

        rel = matrix_from_euler(rule_head(db, fps, rng))
    rel = rotation_power(rel.astype(np.float32), opts.pose_scale) if not opts.still else rel
    t = np.arange(n) / fps
    shift = shift * opts.pose_scale
    shift[:, 1] += BREATH_UNITS * np.sin(2 * np.pi * BREATH_HZ * t)
    rot = (rel @ face.rotation).astype(np.float32)
    trans = (face.translation[None] + shift * face.scale).astype(np.float32)
    scale = np.full(n, face.scale, np.float32)
    # the landmarks, a chunk of frames at a time: only the (T, 478, 3) result grows with the length
    lm = np.empty((n, *face.canon.shape), np.float32)
    for a in range(0, n, TARGET_CHUNK):
        b = min(n, a + TARGET_CHUNK)
        canon = face.canon[None] + lips[a:b] * opts.expression_scale
        if rest is not None:
            canon += rest[None]
        canon += blink_delta(face.canon, closure[a:b])
        if expr_w is not None:
            canon += expr[a:b] * expr_w
        canon = no_crossing(canon)
        lm[a:b] = apply_pose(canon.astype(np.float32), rot[a:b], trans[a:b], scale[a:b])
    return FaceTargets(lm, rot, trans, scale), notes
