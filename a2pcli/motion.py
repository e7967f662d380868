"""Face motion over time, and the `.pose` file that stores it.

A `.pose` file is a NumPy `.npz` archive (read it with `numpy.load` alone; no pickles):

    format       str    "a2p.pose"
    version      int    POSE_VERSION
    fps          float  frames per second
    frame_size   int32 (2,)       source width, height in pixels; (0, 0) when there is no source frame
    landmarks    float32 (T, 478, 3)  MediaPipe face mesh in source pixels (z in the same scale)
    valid        bool (T,)        a face was detected in this frame
    filled       bool (T,)        values were interpolated or held from neighbouring frames
    rotation     float32 (T, 3, 3)  head rotation, image frame (x right, y down, z into the screen)
    euler        float32 (T, 3)   the same as yaw, pitch, roll in degrees, R = Ry(yaw) Rx(pitch) Rz(roll)
    translation  float32 (T, 3)   pixels (face units for templates without a source frame)
    scale        float32 (T,)     pixels per face unit (the outer eye corners are 1 face unit apart)
    expression   float32 (T, 478, 3) landmarks with the head pose removed minus `reference`, face units
    reference    float32 (478, 3) the frontal reference face the pose was fitted to, face units
    meta         str    JSON: source file name, size and sha256, a2p version, options, faces seen

landmarks == scale * (reference + expression) @ rotation.T + translation, per frame.

AniPortrait head-pose templates (`.npy`, T x 6: Euler 'xyz' degrees + translation in cm,
relative to the first frame, 30 fps, MediaPipe's metric camera frame) load as a `Motion` with
rotation and translation only.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from a2pcli.errors import InputError
from a2pcli.headpose import CM_PER_FACE_UNIT, euler_from_matrix, matrix_from_euler

POSE_FORMAT = "a2p.pose"
POSE_VERSION = 1
ANIPORTRAIT_FPS = 30.0  # AniPortrait resamples its templates to 30 fps (generate_ref_pose.py)
_FLIP_GL = np.diag([1.0, -1.0, -1.0]).astype(np.float32)  # OpenGL camera frame <-> image frame

_ARRAYS = ("landmarks", "valid", "filled", "rotation", "translation", "scale", "expression", "reference")


@dataclass
class Motion:
    fps: float
    rotation: np.ndarray  # (T, 3, 3)
    translation: np.ndarray  # (T, 3)
    scale: np.ndarray  # (T,)
    valid: np.ndarray  # (T,) bool
    filled: np.ndarray  # (T,) bool
    frame_size: tuple[int, int] = (0, 0)
    landmarks: np.ndarray | None = None  # (T, 478, 3)
    expression: np.ndarray | None = None  # (T, 478, 3)
    reference: np.ndarray | None = None  # (478, 3)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rotation)

    @property
    def euler(self) -> np.ndarray:
        return euler_from_matrix(self.rotation)

    @property
    def duration(self) -> float:
        return len(self) / self.fps

    def slice(self, start: int, stop: int) -> Motion:
        cut = {k: getattr(self, k)[start:stop] for k in _ARRAYS if k != "reference" and getattr(self, k) is not None}
        return replace(self, **cut)


def save_pose(motion: Motion, path: Path) -> None:
    """Write `motion` to `path` (already a temp path: callers use outputs.atomic_path)."""
    arrays = {
        "format": np.array(POSE_FORMAT),
        "version": np.array(POSE_VERSION, np.int32),
        "fps": np.array(motion.fps, np.float64),
        "frame_size": np.array(motion.frame_size, np.int32),
        "euler": motion.euler,
        "meta": np.array(json.dumps(motion.meta, default=str)),
    }
    for k in _ARRAYS:
        v = getattr(motion, k)
        if v is not None:
            arrays[k] = v
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _corrupt(path: Path, why: str) -> InputError:
    return InputError(f"not a readable .pose file ({why})", subject=str(path), remedy="re-create it with `a2p extract-pose`")


def load_pose(path: Path) -> Motion:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _corrupt(path, str(exc)[:120]) from exc
    if str(data.get("format", "")) != POSE_FORMAT:
        raise _corrupt(path, "no a2p.pose format tag")
    version = int(data.get("version", -1))
    if version != POSE_VERSION:
        raise InputError(
            f"pose format version {version} is not supported (this a2p reads version {POSE_VERSION})",
            subject=str(path),
            remedy="re-create it with `a2p extract-pose`, or use the a2p version that wrote it",
        )
    try:
        motion = Motion(
            fps=float(data["fps"]),
            frame_size=tuple(int(v) for v in data["frame_size"]),
            meta=json.loads(str(data["meta"])),
            **{k: data.get(k) for k in _ARRAYS},
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise _corrupt(path, f"missing or bad field {exc}") from exc
    _check_lengths(motion, path)
    return motion


def _check_lengths(m: Motion, path: Path) -> None:
    n = len(m.rotation)
    for k in _ARRAYS:
        v = getattr(m, k)
        if v is not None and k != "reference" and len(v) != n:
            raise _corrupt(path, f"{k} has {len(v)} frames, rotation has {n}")
    if n == 0 or m.fps <= 0:
        raise _corrupt(path, "no frames or no frame rate")


def load_aniportrait_template(path: Path) -> Motion:
    """AniPortrait `.npy` (T, 6) head-pose template -> Motion (relative to its first frame)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable .npy file ({exc})", subject=str(path)) from exc
    if arr.ndim != 2 or arr.shape[1] != 6 or len(arr) == 0:
        raise InputError(
            f"expected an AniPortrait head-pose template of shape (T, 6), got {arr.shape}",
            subject=str(path),
            remedy="pass a .pose file from `a2p extract-pose` or a T x 6 template",
        )
    r_gl = _matrix_from_euler_xyz_extrinsic(arr[:, :3])
    rotation = _FLIP_GL @ r_gl @ _FLIP_GL
    translation = (arr[:, 3:] @ _FLIP_GL.T / CM_PER_FACE_UNIT).astype(np.float32)
    t = len(arr)
    return Motion(
        fps=ANIPORTRAIT_FPS,
        rotation=rotation.astype(np.float32),
        translation=translation,
        scale=np.ones(t, np.float32),
        valid=np.ones(t, bool),
        filled=np.zeros(t, bool),
        meta={"source": {"name": Path(path).name, "kind": "aniportrait-template"}},
    )


def _matrix_from_euler_xyz_extrinsic(deg: np.ndarray) -> np.ndarray:
    """scipy's Rotation.from_euler('xyz', deg, degrees=True).as_matrix(): Rz @ Ry @ Rx."""
    x, y, z = np.radians(np.asarray(deg, np.float64)).T
    one, zero = np.ones_like(x), np.zeros_like(x)
    rx = np.stack([one, zero, zero, zero, np.cos(x), -np.sin(x), zero, np.sin(x), np.cos(x)], 1).reshape(-1, 3, 3)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], 1).reshape(-1, 3, 3)
    rz = np.stack([np.cos(z), -np.sin(z), zero, np.sin(z), np.cos(z), zero, zero, zero, one], 1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def load_motion(path: Path) -> Motion:
    """A `.pose` file or an AniPortrait `.npy` template, recognised by content."""
    from a2pcli.media import require_file

    path = require_file(path, "motion")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):
        return load_pose(path)
    if magic == b"\x93NUMPY":
        return load_aniportrait_template(path)
    raise _corrupt(path, "neither a .pose (npz) archive nor an .npy template")


def from_euler(euler_deg: np.ndarray, translation: np.ndarray, fps: float) -> Motion:
    """A rotation/translation-only Motion from yaw, pitch, roll degrees (used by tests and tools)."""
    t = len(euler_deg)
    return Motion(
        fps=fps,
        rotation=matrix_from_euler(euler_deg),
        translation=np.asarray(translation, np.float32),
        scale=np.ones(t, np.float32),
        valid=np.ones(t, bool),
        filled=np.zeros(t, bool),
    )
