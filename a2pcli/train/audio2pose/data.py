"""audio2pose's clips: every clip's head pose and speech features (log-mel and prosody).

From videos, through the shared data cache (a2pcli.train.clips: landmarks, head pose and log-mel per clip, the
entries audio2motion reads too) plus one entry per clip of its own (the prosody, which needs the speech
samples). `a2p extract-pose` output (`--poses`) fills missing shared entries without running MediaPipe again.
The clips' pose and features are gathered in one prepared dataset (`dataset.npz`, numpy only): a data folder
holding such files and no videos trains without the videos, MediaPipe or ffmpeg (what a GPU machine is given).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli import features, prosody
from a2pcli.errors import A2PError, InputError
from a2pcli.progress import Reporter
from a2pcli.train.clips import (VIDEO_EXTS, ClipSource, PreparedClip, cache_path, cached_entry, clip_arrays,
                                data_cache_dir, entry_path, load_speech, prepare_all, read_entry, sources_for,
                                write_entry)

DATASET_FILE = "dataset.npz"
DATASET_FORMAT = "a2p.audio2pose.dataset"
DATASET_VERSION = 1
PROSODY_KIND = "audio2pose prosody v1"  # the key of a clip's prosody entry in the data cache
POSE_SUFFIX = ".pose"


@dataclass
class PoseClip:
    """One clip's head pose and speech features. T: video frames, T100: feature frames (features.FRAME_RATE)."""

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


# --- from videos, through the shared cache ---------------------------------------------------------------


def prosody_path(cache_dir: Path, src: ClipSource, max_clip_s: float | None) -> Path:
    return entry_path(cache_dir, PROSODY_KIND, src.video, src.sidecar, f"max{max_clip_s}")


def write_prosody(cache_dir: Path, src: ClipSource, max_clip_s: float | None, audio: np.ndarray,
                  logmel: np.ndarray) -> None:
    """A clip's prosody entry from its speech samples (and their log-mel), e.g. for synthetic clips."""
    write_entry(prosody_path(cache_dir, src, max_clip_s), {"prosody": prosody.prosody(audio, logmel)})


def clip_prosody(clip: PreparedClip, cache_dir: Path, max_clip_s: float | None) -> np.ndarray:
    """(T100, N_PROSODY) prosody of a prepared clip, from the cache (made once from its speech)."""

    def make():
        audio, _ = load_speech(clip.source, max_clip_s)
        return {"prosody": prosody.prosody(audio, clip.logmel)}

    def usable(a):
        p = a.get("prosody")
        return p is not None and p.shape == (len(clip.logmel), prosody.N_PROSODY) and bool(np.isfinite(p).all())

    arrays = cached_entry(prosody_path(cache_dir, clip.source, max_clip_s), make, usable)
    if not usable(arrays):
        raise InputError("gives unusable prosody features", subject=str(clip.source.video))
    return arrays["prosody"].astype(np.float32)


def _precomputed_motion(src: ClipSource, pose_dirs: tuple[Path, ...], max_clip_s: float | None):
    """The Motion of a `.pose` of this video (same stem, its recorded sha256 equal to the video's), or None."""
    from a2pcli.cache import sha256_file
    from a2pcli.motion import load_pose

    for folder in pose_dirs:
        path = Path(folder) / (src.video.stem + POSE_SUFFIX)
        if not path.is_file():
            continue
        try:
            motion = load_pose(path)
        except A2PError:
            continue
        if motion.meta.get("source", {}).get("sha256") != sha256_file(src.video):
            continue
        return motion.slice(0, int(round(max_clip_s * motion.fps))) if max_clip_s is not None else motion
    return None


def fill_from_poses(sources: list[ClipSource], pose_dirs: tuple[Path, ...], cache_dir: Path,
                    max_clip_s: float | None, reporter: Reporter) -> int:
    """Shared cache entries missing for `sources` made from matching `a2p extract-pose` files instead of
    MediaPipe (the speech is still read). Returns how many were made."""
    from a2pcli.landmarks import mouth_opening

    made = 0
    for src in sources:
        path = cache_path(cache_dir, src, max_clip_s)
        if read_entry(path) is not None:
            continue
        motion = _precomputed_motion(src, pose_dirs, max_clip_s)
        if motion is None or motion.expression is None or motion.reference is None:
            continue
        try:
            audio, origin = load_speech(src, max_clip_s)
        except A2PError as exc:
            reporter.warn(f"skipped {src.name}: {exc.one_line()}")
            continue
        canon = motion.reference + motion.expression
        clip = PreparedClip(src, motion.fps, motion.expression.astype(np.float32),
                            mouth_opening(canon).astype(np.float32), motion.valid & ~motion.filled,
                            features.log_mel(audio), origin, motion.rotation.astype(np.float32),
                            motion.translation.astype(np.float32), motion.scale.astype(np.float32))
        cached_entry(path, lambda clip=clip: clip_arrays(clip))
        made += 1
    return made


def from_videos(data: tuple[Path, ...], max_clip_s: float | None, pose_dirs: tuple[Path, ...],
                reporter: Reporter) -> list[PoseClip]:
    """Every usable clip under the data folders (prepared and cached); the others are warned about."""
    sources = sources_for(data)
    cache = data_cache_dir()
    if pose_dirs:
        fill_from_poses(sources, pose_dirs, cache, max_clip_s, reporter)
    out = []
    for clip in prepare_all(sources, cache, max_clip_s, reporter):
        try:
            pros = clip_prosody(clip, cache, max_clip_s)
        except A2PError as exc:
            reporter.warn(f"skipped {clip.source.name}: {exc.one_line()}")
            continue
        out.append(PoseClip(clip.source.name, clip.source.speaker, clip.fps,
                            pose_vector(clip.rotation, clip.translation, clip.scale), clip.valid, clip.logmel, pros))
    return out


# --- prepared datasets ---------------------------------------------------------------------------------


def save_dataset(path: Path, clips: list[PoseClip]) -> None:
    """Every clip's pose and speech features in one file (numpy only): training needs nothing else."""
    from a2pcli.outputs import atomic_path

    def cat(key, dtype):
        return np.concatenate([getattr(c, key) for c in clips]).astype(dtype)

    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(DATASET_FORMAT), version=np.int32(DATASET_VERSION),
                 names=np.array([c.name for c in clips]), speakers=np.array([c.speaker for c in clips]),
                 fps=np.array([c.fps for c in clips], np.float64),
                 pose_len=np.array([len(c.pose) for c in clips], np.int64),
                 feat_len=np.array([len(c.logmel) for c in clips], np.int64),
                 pose=cat("pose", np.float32), valid=cat("valid", bool), logmel=cat("logmel", np.float16),
                 prosody=cat("prosody", np.float16))


def load_dataset(path: Path) -> list[PoseClip]:
    """The clips of a dataset file written by save_dataset; InputError naming it when it is not one."""

    def bad(why: str) -> InputError:
        return InputError(f"not a usable audio2pose dataset ({why})", subject=str(path),
                          remedy=f"give the folder holding the {DATASET_FILE} a training run wrote, or videos")

    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != DATASET_FORMAT or int(z["version"]) != DATASET_VERSION:
                raise bad("another format or version")
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise bad(str(exc)[:100]) from None
    n = len(d["names"])
    pose_at = np.concatenate([[0], np.cumsum(d["pose_len"])])
    feat_at = np.concatenate([[0], np.cumsum(d["feat_len"])])
    if not (len(d["speakers"]) == len(d["fps"]) == len(d["pose_len"]) == len(d["feat_len"]) == n
            and pose_at[-1] == len(d["pose"]) == len(d["valid"])
            and feat_at[-1] == len(d["logmel"]) == len(d["prosody"])
            and d["pose"].ndim == 2 and d["pose"].shape[1] == 5 and d["logmel"].ndim == 2
            and d["logmel"].shape[1] == features.N_MELS and d["prosody"].shape[1:] == (prosody.N_PROSODY,)):
        raise bad("its arrays do not fit together")
    clips = []
    for i, name in enumerate(d["names"]):
        p, f = slice(pose_at[i], pose_at[i + 1]), slice(feat_at[i], feat_at[i + 1])
        clips.append(PoseClip(str(name), str(d["speakers"][i]), float(d["fps"][i]), d["pose"][p], d["valid"][p],
                              d["logmel"][f].astype(np.float32), d["prosody"][f].astype(np.float32)))
    for c in clips:
        if not (np.isfinite(c.pose).all() and np.isfinite(c.logmel).all() and np.isfinite(c.prosody).all()
                and 0 < c.fps <= 1000):
            raise bad(f"clip {c.name} holds non-finite values")
    return clips


def dataset_files(folder: Path) -> list[Path]:
    """The prepared datasets (*.npz) in a data folder that holds no videos; [] for a folder of videos."""
    folder = Path(folder)
    if any(p.suffix.lower() in VIDEO_EXTS for p in folder.rglob("*")):
        return []
    return sorted(p for p in folder.glob("*.npz") if p.is_file())


def load_clips(data: tuple[Path, ...], max_clip_s: float | None, pose_dirs: tuple[Path, ...],
               reporter: Reporter) -> tuple[list[PoseClip], bool]:
    """(the clips of the data folders, whether they came from videos). Folders of prepared datasets and folders
    of videos are not mixed."""
    prepared = {Path(d): dataset_files(d) for d in data}
    if any(prepared.values()):
        if not all(prepared.values()):
            raise InputError("a folder of prepared datasets cannot be mixed with folders of videos", subject="--data",
                             remedy=f"give either folders holding {DATASET_FILE} files or folders of videos")
        return [c for files in prepared.values() for f in files for c in load_dataset(f)], False
    return from_videos(tuple(data), max_clip_s, pose_dirs, reporter), True
