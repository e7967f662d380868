"""Training the audio2pose model (speech -> head motion) on talking videos with their speech.

    train(TrainOptions(...), reporter) -> summary dict        (what `a2p train audio2pose` calls)

Stages, each a function below:
  1. sources: videos under the data folders with their speech and speaker (a2pcli.train_a2m.find_sources:
     a folder per speaker, or a `speakers.tsv`); or a prepared dataset file (`dataset.npz`, step 2's
     output), which needs neither the videos nor MediaPipe: what a GPU machine is given.
  2. prepare_clip: head pose per video frame (a2pcli.extract, or a precomputed `.pose` of the same video
     from --poses, matched by its sha256), log-mel spectra and prosody, cached per clip in
     OUT/cache/<sha256 of the files>.npz. The cache also holds what audio2motion's trainer reads (the
     expression, mouth opening, valid frames, log-mel under the same names), so one preparation serves both.
     The clips' pose and speech features are gathered into OUT/dataset.npz.
  3. segments: each clip's pose resampled to POSE_RATE, cut where the face was lost or the pose jumps (a
     cut, a detection swap), smoothed by MEASURE_SMOOTH_S (landmark jitter), relative to each segment's
     mean: the targets.
  4. split by speaker (--val-speakers, else a share picked by the seed); per-speaker sampling caps, so
     one long speaker (GRID) counts as one speaker.
  5. the loop: conditional flow matching on random crops (time-stretched, mirrored, noisy speech, the
     speech dropped for a share of crops so that guidance can be used); validation each epoch on the
     held-out speakers' whole clips through the same generate path as inference: the per-axis spread
     and speed of the motion against the real clips', and the correlation of head speed with the speech's
     onsets; a checkpoint (model, EMA, optimizer, step, config, split, history) each epoch; --resume.
  6. export: config.json + model.safetensors in OUT (the averaged weights), loadable with
     a2pcli.audio2pose.load_model(OUT).

Checkpoints hold tensors, numbers and strings only and are read with torch.load(weights_only=True).
Seeded: the split, crops, noise and augmentation derive from --seed and the epoch number, so a resumed run
continues as an uninterrupted one would (on the same device).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from a2pcli import features, prosody
from a2pcli.audio2pose import (INPUT_STRIDE, N_INPUT, N_POSE, POSE_RATE, SILENT_INPUT, A2PConfig, Audio2Pose,
                               build_network, gaussian_smooth, save_model)
from a2pcli.errors import A2PError, InputError
from a2pcli.progress import Reporter
from a2pcli.train_a2m import (VIDEO_EXTS, ClipSource, _load_speech, _speaker_map, augment_logmel, find_sources,
                              output_check, split_speakers, warp_mels)

CACHE_VERSION = 1  # bump when what a cache file holds changes
DATASET_FILE = "dataset.npz"
DATASET_FORMAT = "a2p.audio2pose.dataset"
CHECKPOINT_DIR, LAST_CHECKPOINT = "checkpoints", "last.pt"
LOG_FILE = "train_log.jsonl"
POSE_SUFFIX = ".pose"
# targets and measurement
MEASURE_SMOOTH_S = 0.06  # Gaussian sigma: MediaPipe's frame-to-frame jitter is removed, head motion kept
JUMP_DEG = 12.0  # a rotation change this large between two source frames is a cut or a detection swap
JUMP_SHIFT = 0.25  # face units: likewise for the translation
MIN_SEGMENT_S = 1.5  # shorter stretches of usable pose are not used
MAX_SEGMENT_STD = (20.0, 15.0, 15.0, 0.6, 0.6)  # a segment spreading wider than this is not a head talking
MIN_VAL_FRAMES = 25  # held-out segments shorter than this are not scored
CONTROL_CLIPS = 3  # the control drives the model with the speech of this many other clips (each seed)
ONSET_SMOOTH_S = 0.2  # onset strength and head speed are compared at this time resolution (about a syllable)


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
    poses: tuple[Path, ...] = ()  # folders of precomputed .pose files (a2p extract-pose), <video stem>.pose


@dataclass(frozen=True)
class Preset:
    """Internal knobs of a training run."""

    model: A2PConfig
    epochs: int
    batch_size: int
    lr: float
    steps_per_epoch: int = 100
    crop_s: float = 6.0  # seconds of motion per training crop
    weight_decay: float = 0.01
    warmup_steps: int = 200
    val_share: float = 0.15  # share of speakers held out when --val-speakers is not given
    speaker_cap_s: float = 60.0  # a speaker with more footage than this is sampled as if it had this much
    max_clip_s: float | None = None  # cut clips to this length (tiny preset)
    stretch: float = 0.1  # time-stretch factors drawn from [1 - stretch, 1 + stretch]
    mirror: float = 0.5  # share of crops mirrored left-right (yaw, roll and x change sign)
    cond_drop: float = 0.1  # share of crops trained without the speech (for classifier-free guidance)
    noise_prob: float = 0.3  # share of clips given background noise each epoch
    snr_db: tuple[float, float] = (10.0, 40.0)
    warp: float = 0.08  # vocal-tract-length warp of the mel axis
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # validation and export use an exponential moving average of the weights (0: off)
    val_seeds: int = 3  # motions drawn per held-out clip in validation


PRESETS = {
    "tiny": Preset(model=A2PConfig(channels=16, audio_dilations=(1,), dilations=(1, 2), steps=2), epochs=2,
                   batch_size=4, lr=2e-3, steps_per_epoch=3, crop_s=1.0, warmup_steps=2, max_clip_s=2.0,
                   val_share=0.5, ema_decay=0.5, val_seeds=1),
    # the shipped model's recipe (models/audio2pose/README.md)
    "default": Preset(model=A2PConfig(), epochs=20, batch_size=16, lr=2e-3, crop_s=4.0),
}


# --- 1./2. per-clip data, cached ------------------------------------------------------------------------


@dataclass
class PoseClip:
    """One clip's head pose and speech features."""

    name: str  # the path relative to its data folder's parent
    speaker: str
    fps: float
    pose: np.ndarray  # (T, N_POSE) float32: yaw, pitch, roll (degrees), x, y (face units), per video frame
    valid: np.ndarray  # (T,) bool: a face was detected in the frame (not interpolated)
    logmel: np.ndarray  # (T100, N_MELS) float32 ln mel power (features.log_mel)
    prosody: np.ndarray  # (T100, N_PROSODY) float32 (a2pcli.prosody)

    @property
    def duration(self) -> float:
        return min(len(self.pose) / self.fps, len(self.logmel) / features.FRAME_RATE)


def pose_vector(rotation: np.ndarray, translation: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(T, 3, 3), (T, 3) pixels, (T,) pixels per face unit -> (T, N_POSE) [yaw, pitch, roll, x, y]."""
    from a2pcli.headpose import euler_from_matrix

    shift = translation[:, :2] / np.maximum(scale[:, None], 1e-6)
    return np.concatenate([euler_from_matrix(rotation), shift], axis=1).astype(np.float32)


def _file_key(path: Path) -> str:
    from a2pcli.cache import sha256_file

    return sha256_file(path)


def cache_path(cache_dir: Path, src: ClipSource, max_clip_s: float | None) -> Path:
    parts = [f"pose-v{CACHE_VERSION}", _file_key(src.video), _file_key(src.sidecar) if src.sidecar else "-",
             f"max{max_clip_s}"]
    return cache_dir / (hashlib.sha256(" ".join(parts).encode()).hexdigest()[:32] + ".npz")


def _precomputed_motion(src: ClipSource, pose_dirs: tuple[Path, ...], max_clip_s: float | None):
    """The Motion of a `.pose` of this video (same stem, its recorded sha256 equal to the video's), or None."""
    from a2pcli.motion import load_pose

    for folder in pose_dirs:
        path = Path(folder) / (src.video.stem + POSE_SUFFIX)
        if not path.is_file():
            continue
        try:
            motion = load_pose(path)
        except A2PError:
            continue
        if motion.meta.get("source", {}).get("sha256") != _file_key(src.video):
            continue
        if max_clip_s is not None:
            motion = motion.slice(0, int(round(max_clip_s * motion.fps)))
        return motion
    return None


def prepare_clip(src: ClipSource, cache_dir: Path, max_clip_s: float | None = None,
                 pose_dirs: tuple[Path, ...] = ()) -> PoseClip:
    """Head pose, log-mel and prosody of one clip, from the cache when it holds them."""
    path = cache_path(cache_dir, src, max_clip_s)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return PoseClip(src.name, src.speaker, float(z["fps"]),
                                pose_vector(z["rotation"], z["translation"], z["scale"]), z["valid"],
                                z["logmel"], z["prosody"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable: recompute and overwrite
    from a2pcli.landmarks import mouth_opening
    from a2pcli.outputs import atomic_path

    audio, origin = _load_speech(src, max_clip_s)
    motion = _precomputed_motion(src, pose_dirs, max_clip_s)
    if motion is None:
        from a2pcli.extract import ExtractOptions, extract_motion

        motion, _ = extract_motion(src.video, ExtractOptions(end=max_clip_s), Reporter())
    logmel = features.log_mel(audio)
    pros = prosody.prosody(audio, logmel)
    valid = motion.valid & ~motion.filled
    opening = mouth_opening(motion.reference + motion.expression).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        # the names audio2motion's cache uses (fps, expression, opening, valid, logmel, audio_from, name) + the pose
        np.savez(f, fps=np.float64(motion.fps), expression=motion.expression.astype(np.float16), opening=opening,
                 valid=valid, logmel=logmel, audio_from=np.array(origin), name=np.array(src.name),
                 rotation=motion.rotation.astype(np.float32), translation=motion.translation.astype(np.float32),
                 scale=motion.scale.astype(np.float32), prosody=pros, speaker=np.array(src.speaker))
    return PoseClip(src.name, src.speaker, float(motion.fps),
                    pose_vector(motion.rotation, motion.translation, motion.scale), valid, logmel, pros)


def prepare_all(sources: list[ClipSource], cache_dir: Path, max_clip_s: float | None, pose_dirs: tuple[Path, ...],
                reporter: Reporter) -> list[PoseClip]:
    clips = []
    reporter.stage("prepare data (pose + speech features, cached)", len(sources))
    for src in sources:
        try:
            clips.append(prepare_clip(src, cache_dir, max_clip_s, pose_dirs))
        except A2PError as exc:
            reporter.warn(f"skipped {src.name}: {exc.one_line()}")
        reporter.advance()
    return clips


def save_dataset(path: Path, clips: list[PoseClip]) -> None:
    """Every clip's pose and speech features in one file (numpy only): training needs nothing else."""
    from a2pcli.outputs import atomic_path

    def cat(key, dtype):
        return np.concatenate([getattr(c, key) for c in clips]).astype(dtype)

    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(DATASET_FORMAT), version=np.int32(CACHE_VERSION),
                 names=np.array([c.name for c in clips]), speakers=np.array([c.speaker for c in clips]),
                 fps=np.array([c.fps for c in clips], np.float64),
                 pose_len=np.array([len(c.pose) for c in clips], np.int64),
                 feat_len=np.array([len(c.logmel) for c in clips], np.int64),
                 pose=cat("pose", np.float32), valid=cat("valid", bool), logmel=cat("logmel", np.float16),
                 prosody=cat("prosody", np.float16))


def load_dataset(path: Path) -> list[PoseClip]:
    """The clips of a dataset file written by save_dataset."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != DATASET_FORMAT or int(z["version"]) != CACHE_VERSION:
                raise ValueError("not an audio2pose dataset of this version")
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"not a readable audio2pose dataset ({str(exc)[:100]})", subject=str(path),
                         remedy=f"give the {DATASET_FILE} a training run wrote, or a folder of videos") from None
    pose_at = np.concatenate([[0], np.cumsum(d["pose_len"])])
    feat_at = np.concatenate([[0], np.cumsum(d["feat_len"])])
    clips = []
    for i, name in enumerate(d["names"]):
        p, f = slice(pose_at[i], pose_at[i + 1]), slice(feat_at[i], feat_at[i + 1])
        clips.append(PoseClip(str(name), str(d["speakers"][i]), float(d["fps"][i]), d["pose"][p], d["valid"][p],
                              d["logmel"][f].astype(np.float32), d["prosody"][f].astype(np.float32)))
    for c in clips:
        if not (np.isfinite(c.pose).all() and np.isfinite(c.logmel).all() and c.fps > 0):
            raise InputError(f"clip {c.name} holds non-finite values", subject=str(path))
    return clips


def load_clips(opts: TrainOptions, max_clip_s: float | None, cache_dir: Path, reporter: Reporter) -> list[PoseClip]:
    """The clips of --data: a prepared dataset file, or folders of videos (prepared and cached)."""
    files = [d for d in opts.data if Path(d).is_file()]
    if files:
        if len(files) != len(opts.data):
            raise InputError("a prepared dataset cannot be mixed with video folders", subject="--data",
                             remedy=f"give either one {DATASET_FILE} or folders of videos")
        return [c for f in files for c in load_dataset(Path(f))]
    sources = find_sources(list(opts.data), _speaker_map(opts.data))
    if not sources:
        raise InputError("no videos found", subject=", ".join(map(str, opts.data)),
                         remedy=f"put talking videos ({', '.join(VIDEO_EXTS)}) with speech in the folder")
    return prepare_all(sources, cache_dir, max_clip_s, tuple(opts.poses), reporter)


# --- 3. targets: segments of usable pose --------------------------------------------------------------


@dataclass
class Segment:
    clip: int  # index into the clip list
    start: int  # first pose frame (at POSE_RATE) in the clip
    target: np.ndarray  # (L, N_POSE) smoothed pose minus its mean (degrees, face units)


def resample_clip(clip: PoseClip) -> tuple[np.ndarray, np.ndarray]:
    """The clip's pose at POSE_RATE -> (T25, N_POSE) and usable (T25,) bool (both neighbours valid, no jump)."""
    n = int(math.floor(min(len(clip.pose) / clip.fps, len(clip.logmel) / features.FRAME_RATE) * POSE_RATE))
    if n < 2 or len(clip.pose) < 2:
        return np.zeros((0, N_POSE), np.float32), np.zeros(0, bool)
    step = np.abs(np.diff(clip.pose, axis=0))
    jump = (step[:, :3].max(1) > JUMP_DEG) | (step[:, 3:].max(1) > JUMP_SHIFT)  # between frames k and k+1
    ok_pair = clip.valid[:-1] & clip.valid[1:] & ~jump
    pos = np.clip(np.arange(n) / POSE_RATE * clip.fps, 0, len(clip.pose) - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), len(clip.pose) - 2)
    w = (pos - i0)[:, None]
    pose = ((1 - w) * clip.pose[i0] + w * clip.pose[i0 + 1]).astype(np.float32)
    return pose, ok_pair[i0]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def clip_segments(clip: PoseClip, index: int) -> list[Segment]:
    """The clip's stretches of usable pose, each smoothed and relative to its own mean."""
    pose, usable = resample_clip(clip)
    out = []
    for a, b in _runs(usable):
        if b - a < MIN_SEGMENT_S * POSE_RATE:
            continue
        seg = gaussian_smooth(pose[a:b], MEASURE_SMOOTH_S * POSE_RATE)
        seg = seg - seg.mean(0)
        if (seg.std(0) > np.asarray(MAX_SEGMENT_STD)).any():
            continue
        out.append(Segment(index, a, seg.astype(np.float32)))
    return out


def all_segments(clips: list[PoseClip], idx: list[int]) -> list[Segment]:
    return [s for i in idx for s in clip_segments(clips[i], i)]


# --- 4. split and sampling weights --------------------------------------------------------------------


def split(clips: list[PoseClip], val_speakers, share: float, seed: int) -> tuple[list[int], list[int]]:
    """Clip indices for training and validation, split by speaker (audio2motion's rule)."""
    from types import SimpleNamespace

    return split_speakers([SimpleNamespace(source=SimpleNamespace(speaker=c.speaker)) for c in clips],
                          val_speakers, share, seed)


def segment_weights(clips: list[PoseClip], segs: list[Segment], cap_s: float) -> np.ndarray:
    """(S,) sampling probability of each segment: its seconds, scaled down for speakers with more than cap_s."""
    per_spk: dict[str, float] = {}
    for s in segs:
        spk = clips[s.clip].speaker
        per_spk[spk] = per_spk.get(spk, 0.0) + len(s.target) / POSE_RATE
    w = np.array([len(s.target) / POSE_RATE * min(1.0, cap_s / per_spk[clips[s.clip].speaker]) for s in segs])
    return w / max(w.sum(), 1e-12)


def effective_seconds(clips: list[PoseClip], segs: list[Segment], cap_s: float) -> float:
    per_spk: dict[str, float] = {}
    for s in segs:
        per_spk[clips[s.clip].speaker] = per_spk.get(clips[s.clip].speaker, 0.0) + len(s.target) / POSE_RATE
    return float(sum(min(v, cap_s) for v in per_spk.values()))


def pose_std(segs: list[Segment]) -> tuple[float, ...]:
    """Per-channel standard deviation of the targets (the model's normalisation)."""
    x = np.concatenate([s.target for s in segs]).astype(np.float64)
    return tuple(round(float(v), 5) for v in np.maximum(x.std(0), 1e-4))


# --- 5. batches ---------------------------------------------------------------------------------------


def clip_inputs(clip: PoseClip, rng: np.random.Generator | None, p: Preset | None) -> np.ndarray:
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


MARGIN_FRAMES = 8  # pose frames of speech context beyond each crop edge (the encoder's reach)


def make_batch(segs: list[Segment], inputs: dict[int, np.ndarray], pick: np.ndarray, rng: np.random.Generator,
               p: Preset, std: np.ndarray):
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


# --- 6. the loss (conditional flow matching) ----------------------------------------------------------


def flow_loss(net, speech, target, mask, rng: np.random.Generator, p: Preset):
    """Rectified-flow loss: x_t = (1 - t) noise + t target, t logit-normal (the middle times, where the speech
    decides most, drawn more often); the net predicts target - noise from x_t, t and the speech (dropped for a
    share of the crops). speech: (B, N_INPUT, 4 (L + 2 M)), target: (B, N_POSE, L), mask: (B, L) tensors."""
    import torch

    bsz, _, n = target.shape
    t = torch.from_numpy((1 / (1 + np.exp(-rng.standard_normal(bsz)))).astype(np.float32)).to(target.device)
    noise = torch.from_numpy(rng.standard_normal(target.shape).astype(np.float32)).to(target.device)
    keep = torch.from_numpy((rng.random(bsz) >= p.cond_drop).astype(np.float32)).to(target.device)
    cond = net.denoiser.prepare(net.audio(speech)[:, :, MARGIN_FRAMES : MARGIN_FRAMES + n] * keep[:, None, None])
    xt = (1 - t)[:, None, None] * noise + t[:, None, None] * target
    v = net.denoiser(xt, cond, t)
    err = ((v - (target - noise)) ** 2).sum(1)  # (B, L)
    return (err * mask).sum() / mask.sum().clamp(min=1.0) / target.shape[1]


# --- 7. evaluation ------------------------------------------------------------------------------------


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


def head_speed(euler: np.ndarray, fps: float) -> np.ndarray:
    """(T,) angular speed (degrees/s, the norm over yaw, pitch, roll) of measured motion, smoothed like the onsets."""
    e = measure(euler, fps)
    v = np.linalg.norm(np.gradient(e, axis=0), axis=1) * fps if len(e) > 1 else np.zeros(len(e))
    return gaussian_smooth(v[:, None].astype(np.float32), ONSET_SMOOTH_S * fps)[:, 0]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a**2).sum() * (b**2).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def speed_onset_r(euler: np.ndarray, onsets: np.ndarray, fps: float) -> float:
    """Pearson correlation of head speed with speech onsets over the common frames."""
    n = min(len(euler), len(onsets))
    return _corr(head_speed(euler[:n], fps), onsets[:n]) if n > 2 else 0.0


def held_out_motion(clip: PoseClip) -> list[tuple[int, int, np.ndarray]]:
    """The clip's scored stretches in its own video frames: (first, stop, (L, 3) real yaw/pitch/roll, raw)."""
    ok = clip.valid.copy()
    if len(ok) > 1:
        jump = np.abs(np.diff(clip.pose[:, :3], axis=0)).max(1) > JUMP_DEG
        ok[1:] &= ~jump
        ok[:-1] &= ~jump
    n = min(len(ok), int(len(clip.logmel) / features.FRAME_RATE * clip.fps))
    return [(a, b, clip.pose[a:b, :3]) for a, b in _runs(ok[:n]) if b - a >= MIN_VAL_FRAMES]


def evaluate_clips(model: Audio2Pose, clips: list[PoseClip], seeds: int, rule: bool = False) -> list[dict]:
    """Per held-out clip: the real motion's spread, speed and speed-onset correlation, and the same for the
    model's motion (mean over `seeds` seeds), for the model driven by other clips' speech (the control:
    CONTROL_CLIPS others, looped to the length, scored against this clip's onsets), and, with `rule`, for
    the hand-made rule (a2pcli.talk.rule_head)."""
    rows = []
    for k, c in enumerate(clips):
        spans = held_out_motion(c)
        if not spans:
            continue
        n = min(len(c.pose), int(len(c.logmel) / features.FRAME_RATE * c.fps))
        onsets = onset_strength(c.logmel, c.fps, n)
        gen = [_generate(model, clip_inputs(c, None, None), c.fps, n, s) for s in range(seeds)]
        others = [clips[(k + j) % len(clips)] for j in range(1, min(CONTROL_CLIPS, len(clips) - 1) + 1)] or [c]
        ctrl = [_generate(model, _loop_inputs(clip_inputs(o, None, None), n / c.fps), c.fps, n, s)
                for s in range(seeds) for o in others]
        row = {"clip": c.name, "speaker": c.speaker, "seconds": round(sum(b - a for a, b, _ in spans) / c.fps, 2)}
        row.update(_score("real", [[e for _, _, e in spans]], spans, onsets, c.fps))
        row.update(_score("model", [[g[a:b] for a, b, _ in spans] for g in gen], spans, onsets, c.fps))
        row.update(_score("control", [[g[a:b] for a, b, _ in spans] for g in ctrl], spans, onsets, c.fps))
        if rule:
            from a2pcli.talk import rule_head

            db = _loudness_from_logmel(c.logmel, c.fps, n)
            rules = [rule_head(db, c.fps, np.random.default_rng(s)) for s in range(seeds)]
            row.update(_score("rule", [[g[a:b] for a, b, _ in spans] for g in rules], spans, onsets, c.fps))
        rows.append(row)
    return rows


def _loudness_from_logmel(logmel: np.ndarray, fps: float, n: int) -> np.ndarray:
    """(n,) per-frame loudness in dB as a2pcli.talk.loudness gives it, from the log-mel (for clips whose
    samples are not at hand): the mean power of the feature frames under each video frame."""
    power = np.exp(features.frame_level_db(logmel) / features._DB_PER_NEPER) / 2.0  # full-scale sine -> mean square
    cum = np.concatenate([[0.0], np.cumsum(power)])
    edges = np.clip(np.round(np.arange(n + 1) / fps * features.FRAME_RATE).astype(np.int64), 0, len(power))
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    ms = (cum[edges[1:]] - cum[edges[:-1]]) / cnt
    return np.maximum(10 * np.log10(ms + 1e-8), -80.0).astype(np.float32)


def _loop_inputs(inputs: np.ndarray, seconds: float) -> np.ndarray:
    """Speech inputs repeated (or cut) to cover `seconds`."""
    need = int(math.ceil(seconds * features.FRAME_RATE)) + INPUT_STRIDE
    return np.concatenate([inputs] * int(math.ceil(need / max(len(inputs), 1))))[:need]


def _generate(model: Audio2Pose, inputs: np.ndarray, fps: float, n: int, seed: int) -> np.ndarray:
    """(n, 3) yaw, pitch, roll the model generates from speech inputs, at `fps` (the path of Audio2Pose.generate
    after its feature step)."""
    from a2pcli.audio2pose import resample

    motion = model.from_normalised(model.generate_normalised(inputs, seed))
    return resample(motion, fps, n)[:, :3]


def _score(prefix: str, runs: list[list[np.ndarray]], spans, onsets: np.ndarray, fps: float) -> dict:
    """Mean over runs (seeds) of the frame-weighted per-axis std, velocity and speed-onset r over the spans."""
    std, vel, rs = [], [], []
    w = np.array([b - a for a, b, _ in spans], np.float64)
    for run in runs:
        st = [motion_stats(e, fps) for e in run]
        std.append(np.average([s["std"] for s in st], axis=0, weights=w))
        vel.append(np.average([s["velocity"] for s in st], axis=0, weights=w))
        rs.append(np.average([speed_onset_r(e, onsets[a:b], fps) for e, (a, b, _) in zip(run, spans)], weights=w))
    return {f"{prefix}_std": [round(float(v), 3) for v in np.mean(std, 0)],
            f"{prefix}_velocity": [round(float(v), 3) for v in np.mean(vel, 0)],
            f"{prefix}_onset_r": round(float(np.mean(rs)), 4)}


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
        out[f"{who}_onset_r"] = round(float(np.mean([r[f"{who}_onset_r"] for r in rows])), 4)
    for who in ("model", "rule"):
        if f"{who}_std" in out:
            out[f"{who}_std_ratio"] = [round(a / max(b, 1e-9), 3) for a, b in zip(out[f"{who}_std"], out["real_std"])]
            out[f"{who}_velocity_ratio"] = [round(a / max(b, 1e-9), 3)
                                            for a, b in zip(out[f"{who}_velocity"], out["real_velocity"])]
    return out


# --- 8. the run ----------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a checkpoint holds besides the tensors."""

    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class _Context:
    clips: list[PoseClip]
    train_idx: list[int]
    val_idx: list[int]
    segs: list[Segment]
    weights: np.ndarray
    cfg: A2PConfig
    p: Preset
    opts: TrainOptions
    device: str
    out: Path
    ema: object


def resolve_preset(opts: TrainOptions) -> Preset:
    if opts.preset not in PRESETS:
        raise InputError(f"unknown preset {opts.preset!r}", subject="--preset", remedy=f"one of {', '.join(PRESETS)}")
    p = PRESETS[opts.preset]
    return replace(p, epochs=opts.epochs or p.epochs, batch_size=opts.batch_size or p.batch_size,
                   lr=opts.lr if opts.lr is not None else p.lr)


def find_checkpoint(resume: Path | None) -> Path | None:
    if resume is None:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST_CHECKPOINT if (path / CHECKPOINT_DIR).is_dir() else path / LAST_CHECKPOINT
    if not path.is_file():
        raise InputError("no checkpoint there", subject=str(path), remedy="give a checkpoint file or a model folder "
                         f"with {CHECKPOINT_DIR}/{LAST_CHECKPOINT}")
    return path


def read_checkpoint(path: Path) -> dict:
    """A checkpoint, unpickled with torch's weights-only loader (tensors, numbers, strings, lists, dicts)."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["run"] = json.loads(ckpt["run"])
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a readable audio2pose checkpoint ({str(exc).splitlines()[0][:120]})", subject=str(path),
                         remedy="give a checkpoints/last.pt written by `a2p train audio2pose`") from None
    if ckpt["run"].get("format") != "a2p.audio2pose.checkpoint":
        raise InputError("not an audio2pose checkpoint", subject=str(path),
                         remedy="give a checkpoints/last.pt written by `a2p train audio2pose`")
    return ckpt


def save_checkpoint(out: Path, net, optim, state: RunState, ctx: _Context) -> Path:
    """model, EMA and optimizer state as tensors; everything else as one JSON string (weights_only-safe)."""
    import torch

    from a2pcli.outputs import atomic_path

    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    run = {"format": "a2p.audio2pose.checkpoint", "epoch": state.epoch, "step": state.step, "history": state.history,
           "config": asdict(ctx.cfg), "preset": _preset_dict(ctx.p), "options": _options_dict(ctx.opts),
           "split": {"train": [ctx.clips[i].name for i in ctx.train_idx],
                     "val": [ctx.clips[i].name for i in ctx.val_idx]}}
    data = {"model": net.state_dict(), "ema": ctx.ema.state_dict(), "optimizer": optim.state_dict(),
            "run": json.dumps(run, default=_json_default)}
    path = folder / LAST_CHECKPOINT
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(data, tmp)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _options_dict(opts: TrainOptions) -> dict:
    """The options as JSON, paths by their last part only (a shipped model names no folder of the machine
    it was trained on)."""
    d = asdict(opts)
    for k, v in d.items():
        if isinstance(v, Path):
            d[k] = v.name
        elif isinstance(v, tuple) and v and isinstance(v[0], Path):
            d[k] = [p.name for p in v]
    return json.loads(json.dumps(d, default=_json_default))


def _preset_dict(p: Preset) -> dict:
    d = asdict(p)
    d["model"] = asdict(p.model)
    return json.loads(json.dumps(d, default=_json_default))


def _preset_from_run(run: dict, p: Preset) -> Preset:
    d = dict(run["preset"])
    d["model"] = A2PConfig.from_dict(d["model"])
    d["snr_db"] = tuple(d["snr_db"])
    return replace(Preset(**d), epochs=p.epochs)


def _split_from_run(run: dict, clips: list[PoseClip]) -> tuple[list[int], list[int]]:
    names = {c.name: i for i, c in enumerate(clips)}
    missing = [n for n in run["split"]["train"] + run["split"]["val"] if n not in names]
    if missing:
        raise InputError(f"the checkpoint was trained on clips that are not in --data now ({missing[0]}, ...)",
                         subject="--resume", remedy="resume with the same --data folders")
    return [names[n] for n in run["split"]["train"]], [names[n] for n in run["split"]["val"]]


def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _derive(seed: int, *parts) -> int:
    return zlib.crc32(" ".join(map(str, (seed, *parts))).encode())


def _lr_at(step: int, total: int, p: Preset) -> float:
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    frac = (step - p.warmup_steps) / max(1, total - p.warmup_steps)
    return p.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _make_ema(net, p: Preset):
    import copy

    if not p.ema_decay:
        return net
    ema = copy.deepcopy(net)
    for q in ema.parameters():
        q.requires_grad_(False)
    return ema


def _update_ema(ema, net, decay: float, step: int) -> None:
    import torch

    if ema is net:
        return
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, q in zip(ema.parameters(), net.parameters()):
            e.mul_(d).add_(q.detach(), alpha=1 - d)


def _check_data(clips: list[PoseClip], opts: TrainOptions) -> None:
    if len(clips) < 2:
        raise InputError(f"only {len(clips)} usable clip(s)", subject=", ".join(map(str, opts.data)),
                         remedy="training needs talking videos of at least two speakers (one is held out)")


def train(opts: TrainOptions, reporter: Reporter | None = None) -> dict:
    """Prepare the data, train, validate, checkpoint and export. Returns the summary."""
    import torch

    from a2pcli.device import JobEstimate, preflight

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    p = resolve_preset(opts)
    ckpt_path = find_checkpoint(opts.resume)
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        p = _preset_from_run(ckpt["run"], p)
    choice = preflight(opts.device, JobEstimate("training audio2pose", vram_bytes=1 << 30))
    device = choice.device
    reporter.info(f"device: {choice.device} ({choice.name}); preset {opts.preset}, {p.epochs} epochs, "
                  f"batch {p.batch_size}, lr {p.lr:g}")
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is None and (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run: the log starts again

    clips = load_clips(opts, p.max_clip_s, out / "cache", reporter)
    _check_data(clips, opts)
    if not any(Path(d).is_file() for d in opts.data):
        save_dataset(out / DATASET_FILE, clips)
    if ckpt is not None:
        train_idx, val_idx = _split_from_run(ckpt["run"], clips)
    else:
        train_idx, val_idx = split(clips, opts.val_speakers, p.val_share, opts.seed)
    segs = all_segments(clips, train_idx)
    if not segs:
        raise InputError("no clip has a usable stretch of head pose", subject=", ".join(map(str, opts.data)),
                         remedy=f"training needs talking videos of at least {MIN_SEGMENT_S:g} s with a face throughout")
    cfg = replace(p.model, pose_std=pose_std(segs)) if ckpt is None else A2PConfig.from_dict(ckpt["run"]["config"])
    weights = segment_weights(clips, segs, p.speaker_cap_s)
    reporter.info(_data_line(clips, train_idx, val_idx, segs, p))

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
        run = ckpt["run"]
        state = RunState(run["epoch"], run["step"], run["history"])
        reporter.info(f"resumed from {ckpt_path} after epoch {state.epoch} (step {state.step})")
    ctx = _Context(clips, train_idx, val_idx, segs, weights, cfg, p, opts, device, out, ema)
    total_steps = p.steps_per_epoch * p.epochs
    reporter.stage("train", total_steps)
    reporter.advance(state.step)
    for epoch in range(state.epoch + 1, p.epochs + 1):
        row = train_epoch(ctx, net, optim, epoch, total_steps, state, reporter)
        row.update(validate(ctx, ema))
        state.history.append({k: v for k, v in row.items() if k != "val_clips"})
        state.epoch = epoch
        _append_log(out, row)
        save_checkpoint(out, net, optim, state, ctx)
        reporter.info(_epoch_line(row, p.epochs))
    model = export(ctx, ema, state)
    return _summary(ctx, state, model, t0, choice)


def train_epoch(ctx: _Context, net, optim, epoch: int, total_steps: int, state: RunState, reporter: Reporter) -> dict:
    import torch

    p = ctx.p
    rng = np.random.default_rng(_derive(ctx.opts.seed, "epoch", epoch))
    torch.manual_seed(_derive(ctx.opts.seed, "torch", epoch))
    used = sorted({s.clip for s in ctx.segs})
    inputs = {i: clip_inputs(ctx.clips[i], rng, p) for i in used}
    std = np.asarray(ctx.cfg.pose_std, np.float32)
    net.train()
    total, t0 = 0.0, time.perf_counter()
    for _ in range(p.steps_per_epoch):
        pick = rng.choice(len(ctx.segs), size=p.batch_size, p=ctx.weights)
        x, y, m = make_batch(ctx.segs, inputs, pick, rng, p, std)
        x, y, m = (torch.from_numpy(a).to(ctx.device) for a in (x, y, m))
        for group in optim.param_groups:
            group["lr"] = _lr_at(state.step, total_steps, p)
        loss = flow_loss(net, x, y, m, rng, p)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
        optim.step()
        state.step += 1
        _update_ema(ctx.ema, net, p.ema_decay, state.step)
        total += float(loss.detach())
        reporter.advance()
    return {"epoch": epoch, "step": state.step, "lr": round(_lr_at(state.step - 1, total_steps, p), 6),
            "train_loss": round(total / p.steps_per_epoch, 4), "seconds": round(time.perf_counter() - t0, 1)}


def _model_for_eval(ctx: _Context, net) -> Audio2Pose:
    net.eval()
    return Audio2Pose(ctx.cfg, net, {}, ctx.device)


def validate(ctx: _Context, net, rule: bool = False) -> dict:
    """Motion statistics of the held-out clips, real against generated (see evaluate_clips)."""
    if not ctx.val_idx:
        return {}
    model = _model_for_eval(ctx, net)
    rows = evaluate_clips(model, [ctx.clips[i] for i in ctx.val_idx], ctx.p.val_seeds, rule=rule)
    s = summarise(rows)
    if not s:
        return {}
    out = {f"val_{k}": v for k, v in s.items()}
    out["val_clips"] = rows
    return out


def export(ctx: _Context, net, state: RunState) -> Audio2Pose:
    """Validate once more (the hand-made rule beside) and write config.json + model.safetensors."""
    final = validate(ctx, net, rule=True)
    if final and state.history:
        state.history[-1]["final"] = {k: v for k, v in final.items() if k != "val_clips"}
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "a2p_version": _version(),
        "options": _options_dict(ctx.opts),
        "preset": _preset_dict(ctx.p),
        "data": _data_summary(ctx),
        "epochs": state.epoch,
        "steps": state.step,
        "measure_smooth_s": MEASURE_SMOOTH_S,
        "validation": final,
    }
    save_model(ctx.out, ctx.cfg, net.state_dict(), meta)
    model = _model_for_eval(ctx, net)
    model.meta, model.path = meta, ctx.out
    return model


def _version() -> str:
    from a2pcli import __version__

    return __version__


def _data_summary(ctx: _Context) -> dict:
    def part(idx):
        spk = sorted({ctx.clips[i].speaker for i in idx})
        return {"clips": len(idx), "speakers": len(spk), "seconds": round(sum(ctx.clips[i].duration for i in idx), 1),
                "speaker_names": spk}

    return {"train": {**part(ctx.train_idx), "segments": len(ctx.segs),
                      "segment_seconds": round(sum(len(s.target) for s in ctx.segs) / POSE_RATE, 1),
                      "effective_seconds": round(effective_seconds(ctx.clips, ctx.segs, ctx.p.speaker_cap_s), 1)},
            "val": part(ctx.val_idx), "data_folders": [Path(d).name for d in ctx.opts.data]}


def _data_line(clips, train_idx, val_idx, segs, p: Preset) -> str:
    spk_t = len({clips[i].speaker for i in train_idx})
    spk_v = len({clips[i].speaker for i in val_idx})
    sec = sum(len(s.target) for s in segs) / POSE_RATE
    return (f"data: train {len(train_idx)} clips / {spk_t} speakers, {len(segs)} stretches of usable pose, {sec:.0f} s "
            f"(sampled as {effective_seconds(clips, segs, p.speaker_cap_s):.0f} s); val {len(val_idx)} clips / "
            f"{spk_v} speakers")


def _epoch_line(row: dict, epochs: int) -> str:
    s = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f}"
    if "val_model_std_ratio" in row:
        fmt = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
        s += (f"; val spread x{fmt(row['val_model_std_ratio'])}, speed x{fmt(row['val_model_velocity_ratio'])} "
              f"(yaw/pitch/roll), onset r {row['val_model_onset_r']:.3f} (real {row['val_real_onset_r']:.3f}, "
              f"control {row['val_control_onset_r']:.3f})")
    return s + f"; {row['seconds']:.0f} s"


def _append_log(out: Path, row: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(row, default=_json_default) + "\n")


def _summary(ctx: _Context, state: RunState, model: Audio2Pose, t0: float, choice) -> dict:
    last = state.history[-1] if state.history else {}
    return {
        "output": str(ctx.out),
        "files": [str(ctx.out / "config.json"), str(ctx.out / "model.safetensors")],
        "checkpoint": str(ctx.out / CHECKPOINT_DIR / LAST_CHECKPOINT),
        "dataset": str(ctx.out / DATASET_FILE) if (ctx.out / DATASET_FILE).is_file() else None,
        "device": choice.device,
        "epochs": state.epoch,
        "steps": state.step,
        "data": _data_summary(ctx),
        "train_loss": last.get("train_loss"),
        "validation": {k: v for k, v in (model.meta.get("validation") or {}).items() if k != "val_clips"},
        "parameters": int(sum(q.numel() for q in model.net.parameters())),
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }


__all__ = ["TrainOptions", "PRESETS", "train", "output_check", "evaluate_clips", "summarise", "motion_stats",
           "onset_strength", "speed_onset_r", "prepare_clip", "load_dataset", "save_dataset", "N_INPUT"]
