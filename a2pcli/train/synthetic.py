"""Synthetic talking clips for tests and benchmarks: the trainers run end to end without videos, MediaPipe or
ffmpeg.

    make_synthetic_data(folder, cache_dir, speakers=2, ...) -> [ClipSource]

writes, per clip, a small stand-in file <folder>/<speaker>/<clip>.mp4 (not a video: its bytes only name the
clip, so the cache key is unique) and, into the data cache (a2pcli.train.clips), the prepared arrays a real
clip of that length would have: a babbling voice (a buzz whose loudness comes and goes at syllable rate, with
pauses) as log-mel (and as the prosody audio2pose's trainer caches), and a face whose jaw and lower lip open
with the voice's loudness, plus small head motion.
The trainers then find the clips under `folder` and read them from the cache. Deterministic for a seed. The
clips have the shapes and rough statistics of real ones; a model trained on them is of no use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from a2pcli import features
from a2pcli.landmarks import LEFT_EYE_OUTER, LOWER_LIP_INNER, RIGHT_EYE_OUTER, UPPER_LIP_INNER, mouth_opening
from a2pcli.train.clips import ClipSource, PreparedClip, cache_path, clip_arrays, write_entry

FPS = 25.0  # video frames a second
SYLLABLE_HZ = (3.0, 5.0)  # syllable rate of a clip's babble, drawn from this range
F0_HZ = (90.0, 220.0)  # a speaker's voice pitch, drawn from this range
PAUSE_EVERY_S, PAUSE_S = 1.6, 0.4  # a pause of PAUSE_S seconds about every PAUSE_EVERY_S seconds
JAW_OPEN = 0.25  # the widest mouth opening (lip gap over eye-corner distance)
FACE_NOISE, FRAME_NOISE = 0.01, 0.002  # a speaker's own face offsets and per-frame landmark noise (eye distances)
HEAD_DEG = 3.0  # standard deviation of the slow head turn, degrees


def make_synthetic_data(folder: Path, cache_dir: Path, speakers: int = 2, clips_per_speaker: int = 2,
                        seconds: float = 4.0, max_clip_s: tuple[float | None, ...] = (None,),
                        seed: int = 0) -> list[ClipSource]:
    """Synthetic clips of `speakers` speakers ("spk00", ...) under `folder`, prepared into `cache_dir` for each
    clip length setting in `max_clip_s` (a trainer preset's `max_clip_s`: its entries are keyed by it)."""
    from a2pcli.headpose import load_reference
    from a2pcli.train.audio2pose.data import write_prosody

    reference = load_reference().mean
    rng = np.random.default_rng(seed)
    sources = []
    for s in range(speakers):
        speaker = f"spk{s:02d}"
        face = rng.normal(0, FACE_NOISE, reference.shape).astype(np.float32) * _eye_distance(reference)
        f0 = rng.uniform(*F0_HZ)
        for c in range(clips_per_speaker):
            video = Path(folder) / speaker / f"clip{c:02d}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            video.write_bytes(f"a2p synthetic clip {speaker}/{c} seed {seed}\n".encode())
            src = ClipSource(video, None, speaker, str(video.relative_to(Path(folder).parent)))
            audio = babble(seconds, f0, rng)
            clip = synthetic_clip(src, reference, face, audio, rng)
            for m in max_clip_s:
                cut = _cut(clip, m)
                write_entry(cache_path(Path(cache_dir), src, m), clip_arrays(cut))
                samples = audio if m is None else audio[: int(round(m * features.SAMPLE_RATE))]
                write_prosody(Path(cache_dir), src, m, samples, cut.logmel)
            sources.append(src)
    return sources


def babble(seconds: float, f0: float, rng: np.random.Generator) -> np.ndarray:
    """(samples,) float32 at features.SAMPLE_RATE: a voiced buzz at pitch ~f0 whose loudness comes and goes at
    syllable rate, with pauses."""
    sr = features.SAMPLE_RATE
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    buzz = np.sign(np.sin(2 * np.pi * np.cumsum(pitch) / sr)) * 0.3 + 0.02 * rng.standard_normal(len(t))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(*SYLLABLE_HZ) * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
    talking = (t + rng.uniform(0, PAUSE_EVERY_S)) % PAUSE_EVERY_S > PAUSE_S
    return (buzz * envelope * talking).astype(np.float32)


def synthetic_clip(src: ClipSource, reference: np.ndarray, face: np.ndarray, audio: np.ndarray,
                   rng: np.random.Generator) -> PreparedClip:
    """One clip: the babble's log-mel, and landmarks whose jaw opens with its loudness (T = seconds * FPS)."""
    n = int(round(len(audio) / features.SAMPLE_RATE * FPS))
    hop = features.SAMPLE_RATE / FPS
    loud = np.array([np.sqrt(np.mean(audio[int(i * hop): int((i + 1) * hop)] ** 2)) for i in range(n)])
    opening = loud / max(float(loud.max()), 1e-9)  # 0..1
    y = reference[:, 1]
    y_up, y_low = y[UPPER_LIP_INNER], y[LOWER_LIP_INNER]
    jaw = np.clip((y - y_up) / max(y_low - y_up, 1e-6), 0, 1)  # 0 above the mouth, 1 at the lower lip and below
    eyes = _eye_distance(reference)
    expression = np.broadcast_to(face, (n, *reference.shape)).copy()
    expression[:, :, 1] += JAW_OPEN * eyes * opening[:, None] * jaw[None, :]
    expression += rng.normal(0, FRAME_NOISE * eyes, expression.shape).astype(np.float32)
    expression = expression.astype(np.float16).astype(np.float32)  # the cache's precision
    yaw = np.radians(HEAD_DEG) * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * np.arange(n) / FPS)
    rotation = np.zeros((n, 3, 3), np.float32)
    rotation[:, 0, 0] = rotation[:, 2, 2] = np.cos(yaw)
    rotation[:, 0, 2], rotation[:, 2, 0], rotation[:, 1, 1] = np.sin(yaw), -np.sin(yaw), 1.0
    return PreparedClip(src, FPS, expression, mouth_opening(reference + expression).astype(np.float32),
                        np.ones(n, bool), features.log_mel(audio), "video", rotation, np.zeros((n, 3), np.float32),
                        np.ones(n, np.float32))


def _cut(clip: PreparedClip, max_clip_s: float | None) -> PreparedClip:
    """The clip's first max_clip_s seconds (what preparing it with that setting gives)."""
    if max_clip_s is None:
        return clip
    n, m = int(round(max_clip_s * clip.fps)), int(round(max_clip_s * features.FRAME_RATE))
    return PreparedClip(clip.source, clip.fps, clip.expression[:n], clip.opening[:n], clip.valid[:n],
                        clip.logmel[:m], clip.audio_from, clip.rotation[:n], clip.translation[:n], clip.scale[:n])


def _eye_distance(reference: np.ndarray) -> float:
    return float(np.linalg.norm(reference[RIGHT_EYE_OUTER, :2] - reference[LEFT_EYE_OUTER, :2]))
