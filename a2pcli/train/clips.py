"""Training data shared by the trainers: talking videos with their speech, prepared once and cached.

    find_sources(data folders) -> [ClipSource]        videos (recursively), each with its speech and speaker
    prepare_all(sources, cache_dir) -> [PreparedClip]  landmarks, head pose, mouth opening and log-mel per clip
    split_speakers(clips, ...) -> train, val indices  held-out speakers for validation
    sampling_weights(clips, idx, cap_s)               speakers with much footage sampled down

The speech of a video is its own audio track, else a `.wav`/`.flac` of the same stem beside it. The speaker is
the parent folder's name, or what a `speakers.tsv` (file name <tab> speaker) in a data folder says.

The cache (`data_cache_dir()`: <a2p cache>/train-data, or a folder given by the caller) holds one `.npz` per
clip, named by the sha256 of the video and sidecar files and the settings, so every trainer and every run on
the same files reads the same entries; each is written atomically and read without pickles
(`entry_path`, `read_entry`, `write_entry`: also for a trainer's own prepared data).

Several processes (torchrun's, or `a2p train all` and a run beside it) may prepare the same data at once:
`cached_entry` makes a missing entry under a lock file (<data cache>/locks/<entry>.lock), reading it again once it
holds the lock, so one process prepares each entry and the others wait for it and read it. `prepare_all` lets
each of several processes start on its own share of the clips, then take the rest (prepared by the others
meanwhile, or by itself when its cache is not theirs: a node of its own).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli import features
from a2pcli.errors import A2PError, InputError
from a2pcli.landmarks import mouth_opening
from a2pcli.progress import Reporter

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v")
SIDECAR_AUDIO_EXTS = (".wav", ".flac")  # speech beside a silent video, same stem
SPEAKERS_FILE = "speakers.tsv"
DATA_CACHE_VERSION = 2  # bump when what a cache file holds changes (1: audio2motion's own, in <model>/cache)
DATA_CACHE_SUBDIR = "train-data"
LOCKS_SUBDIR = "locks"  # <data cache>/locks/<entry>.lock: held while an entry is being made
LOCK_TIMEOUT_S = 6 * 3600  # how long a process waits for another's preparation of one entry (a long video)


@dataclass(frozen=True)
class ClipSource:
    video: Path
    sidecar: Path | None  # a same-stem audio file beside the video (used when the video has no sound)
    speaker: str
    name: str  # for messages and checkpoints: the path relative to its data folder's parent


@dataclass
class PreparedClip:
    """One clip's motion and speech. T: video frames, T100: feature frames (features.FRAME_RATE)."""

    source: ClipSource
    fps: float
    expression: np.ndarray  # (T, 478, 3) float32 canonical face units, head pose removed (float16 precision)
    opening: np.ndarray  # (T,) float32 mouth opening of reference + expression (a2pcli.landmarks.mouth_opening)
    valid: np.ndarray  # (T,) bool: a face was detected in the frame (not filled in)
    logmel: np.ndarray  # (T100, N_MELS) float32 ln mel power (features.log_mel)
    audio_from: str  # "video" or the sidecar's name
    rotation: np.ndarray  # (T, 3, 3) float32 head rotation (a2pcli.motion.Motion)
    translation: np.ndarray  # (T, 3) float32
    scale: np.ndarray  # (T,) float32

    @property
    def duration(self) -> float:
        return min(len(self.expression) / self.fps, len(self.logmel) / features.FRAME_RATE)


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


def speaker_map(data: tuple[Path, ...]) -> dict[str, str] | None:
    """Speakers from a `speakers.tsv` (file name <tab> speaker) in a data folder, when there is one."""
    mapping = {}
    for root in data:
        path = Path(root) / SPEAKERS_FILE
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] and not line.startswith("#"):
                    mapping[parts[0]] = parts[1]
    return mapping or None


def sources_for(data: tuple[Path, ...]) -> list[ClipSource]:
    """find_sources with the data folders' speakers.tsv; InputError when there is no video at all."""
    sources = find_sources(list(data), speaker_map(data))
    if not sources:
        raise InputError("no videos found", subject=", ".join(map(str, data)),
                         remedy=f"put talking videos ({', '.join(VIDEO_EXTS)}) with speech in the folder")
    return sources


# --- preparation, cached ---------------------------------------------------------------------------------


def data_cache_dir() -> Path:
    """The shared data cache: <a2p cache dir>/train-data ($A2P_CACHE_DIR moves it)."""
    from a2pcli.cache import cache_dir

    return cache_dir() / DATA_CACHE_SUBDIR


def entry_path(cache_dir: Path, *parts) -> Path:
    """The cache file for a key: files (by the sha256 of their content; None for an absent one) and settings
    (by their text). A trainer that prepares other data (e.g. video frames) names its entries the same way,
    with its own kind and version among the parts."""
    from a2pcli.cache import sha256_file

    keys = [sha256_file(p) if isinstance(p, Path) else "-" if p is None else str(p) for p in parts]
    return cache_dir / (hashlib.sha256(" ".join(keys).encode()).hexdigest()[:32] + ".npz")


def read_entry(path: Path) -> dict[str, np.ndarray] | None:
    """Every array of a cache file (no pickles), or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_entry(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache file atomically (concurrent writers of the same entry are harmless)."""
    from a2pcli.outputs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def cache_path(cache_dir: Path, src: ClipSource, max_clip_s: float | None) -> Path:
    return entry_path(cache_dir, f"clip v{DATA_CACHE_VERSION}", src.video, src.sidecar, f"max{max_clip_s}")


def cached_entry(path: Path, make: Callable[[], dict[str, np.ndarray]],
                 usable: Callable[[dict[str, np.ndarray]], bool] = lambda arrays: True) -> dict[str, np.ndarray]:
    """The arrays of a cache file; when it is missing or not `usable`, `make()`'s, written to it. The making
    happens under the entry's lock, after reading the file once more: of several processes asking at once,
    one makes it and the others wait, then read it."""
    from filelock import FileLock, Timeout

    arrays = read_entry(path)
    if arrays is not None and usable(arrays):
        return arrays
    lock = path.parent / LOCKS_SUBDIR / (path.stem + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(lock), timeout=LOCK_TIMEOUT_S):
            arrays = read_entry(path)
            if arrays is not None and usable(arrays):
                return arrays
            arrays = make()
            write_entry(path, arrays)
            return arrays
    except Timeout:
        raise A2PError(f"another process has held its lock for {LOCK_TIMEOUT_S} s", subject=str(path),
                       remedy=f"if no a2p run is preparing data, delete {lock}") from None


def load_speech(src: ClipSource, max_clip_s: float | None) -> tuple[np.ndarray, str]:
    """(samples at features.SAMPLE_RATE, where they came from): the video's sound, else its sidecar."""
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


_ARRAYS = ("expression", "opening", "valid", "logmel", "rotation", "translation", "scale")


def _clip_from_entry(a: dict[str, np.ndarray] | None, src: ClipSource) -> PreparedClip | None:
    """The cached clip, or None when the entry is missing, of another layout, or inconsistent."""
    if a is None or not set(_ARRAYS) | {"fps", "audio_from"} <= set(a):
        return None
    clip = PreparedClip(src, float(a["fps"]), a["expression"].astype(np.float32), a["opening"], a["valid"],
                        a["logmel"], str(a["audio_from"]), a["rotation"], a["translation"], a["scale"])
    t = len(clip.expression)
    shapes_ok = (clip.expression.ndim == 3 and clip.expression.shape[2] == 3 and clip.logmel.ndim == 2
                 and all(len(getattr(clip, k)) == t for k in ("opening", "valid", "rotation", "translation", "scale")))
    finite = all(np.isfinite(getattr(clip, k)).all() for k in ("expression", "opening", "logmel", "rotation"))
    return clip if shapes_ok and finite and clip.fps > 0 else None


def prepare_clip(src: ClipSource, cache_dir: Path, max_clip_s: float | None = None) -> PreparedClip:
    """Landmarks, head pose and log-mel of one clip (its first max_clip_s seconds), from the cache when it holds
    them (made once, see `cached_entry`). The expression is kept at float16 precision in the cache."""
    path = cache_path(cache_dir, src, max_clip_s)
    arrays = cached_entry(path, lambda: _prepare_arrays(src, max_clip_s),
                          usable=lambda a: _clip_from_entry(a, src) is not None)
    clip = _clip_from_entry(arrays, src)
    if clip is None:
        raise InputError("gives unusable landmarks or speech features (not finite, or of the wrong shape)",
                         subject=str(src.video))
    return clip


def _prepare_arrays(src: ClipSource, max_clip_s: float | None) -> dict[str, np.ndarray]:
    """What a clip's cache entry holds, from the video (MediaPipe) and its speech."""
    from a2pcli.extract import ExtractOptions, extract_motion

    audio, origin = load_speech(src, max_clip_s)
    motion, _ = extract_motion(src.video, ExtractOptions(end=max_clip_s), Reporter())
    canon = motion.reference + motion.expression
    return clip_arrays(PreparedClip(
        src, motion.fps, motion.expression.astype(np.float32), mouth_opening(canon).astype(np.float32),
        motion.valid & ~motion.filled, features.log_mel(audio), origin, motion.rotation.astype(np.float32),
        motion.translation.astype(np.float32), motion.scale.astype(np.float32)))


def clip_arrays(clip: PreparedClip) -> dict[str, np.ndarray]:
    """A prepared clip as the arrays of its cache entry (the expression at float16 precision)."""
    return {"fps": np.float64(clip.fps), "expression": clip.expression.astype(np.float16),
            "opening": clip.opening, "valid": clip.valid, "logmel": clip.logmel,
            "audio_from": np.array(clip.audio_from), "name": np.array(clip.source.name), "rotation": clip.rotation,
            "translation": clip.translation, "scale": clip.scale}


def prepare_all(sources: list[ClipSource], cache_dir: Path, max_clip_s: float | None, reporter: Reporter,
                process: tuple[int, int] | None = None) -> list[PreparedClip]:
    """Every clip that can be prepared, in the order of `sources`; the others are reported as warnings and
    skipped. `process`: (rank, processes) of this process among several preparing the same sources at once
    (None: torchrun's, from the environment): each starts with its own share, sources[rank::processes]."""
    if process is None:
        from a2pcli.train.core import launch_from_env

        launch = launch_from_env()
        process = (launch.rank, launch.world_size)
    rank, n = process
    order = list(range(rank, len(sources), n)) + [i for i in range(len(sources)) if i % n != rank]
    clips: dict[int, PreparedClip] = {}
    reporter.stage("prepare data (landmarks + features, cached)", len(sources))
    for i in order:
        try:
            clips[i] = prepare_clip(sources[i], cache_dir, max_clip_s)
        except A2PError as exc:
            reporter.warn(f"skipped {sources[i].name}: {exc.one_line()}")
        reporter.advance()
    return [clips[i] for i in sorted(clips)]


# --- split and sampling ------------------------------------------------------------------------------------


def split_speakers(clips: list[PreparedClip], val_speakers: tuple[str, ...] | None, share: float,
                   seed: int) -> tuple[list[int], list[int]]:
    """(train, val) clip indices: val_speakers held out, else round(share * speakers) picked by the seed."""
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


def split_from_names(names: dict[str, list[str]], clips: list[PreparedClip]) -> tuple[list[int], list[int]]:
    """A checkpoint's split ({"train": [clip names], "val": [...]}) as indices into `clips`."""
    index = {c.source.name: i for i, c in enumerate(clips)}
    missing = [n for n in names["train"] + names["val"] if n not in index]
    if missing:
        raise InputError(f"the checkpoint was trained on clips that are not in --data now ({missing[0]}, ...)",
                         subject="--resume", remedy="resume with the same --data folders")
    return [index[n] for n in names["train"]], [index[n] for n in names["val"]]


def sampling_weights(clips: list[PreparedClip], idx: list[int], cap_s: float) -> dict[int, float]:
    """clip index -> its effective seconds: its duration, scaled down for speakers with more than cap_s."""
    per_spk: dict[str, float] = {}
    for i in idx:
        per_spk[clips[i].source.speaker] = per_spk.get(clips[i].source.speaker, 0.0) + clips[i].duration
    return {i: clips[i].duration * min(1.0, cap_s / max(per_spk[clips[i].source.speaker], 1e-9)) for i in idx}
