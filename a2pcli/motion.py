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
from a2pcli.landmarks import N_LANDMARKS

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
    """Write `motion` to `path` (already a temp path: callers use outputs.atomic_path). A write that fails (a full
    disk) raises its OSError from here, with the archive closed: nothing is left to fail again later."""
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
    # np.savez's layout (one .npy member per array, stored), written here so that every file is closed by a
    # `with`: np.savez leaves its archive open when a write fails, and its clean-up fails again at exit.
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


# --- reading: every array checked (shape, type, finite, plausible) before anything uses it ----------------

REQUIRED = ("rotation", "translation", "scale", "valid", "filled")  # what every .pose holds; the rest is optional
MAX_POSE_FPS = 1000.0  # the highest frame rate the encoder writes (encode.VideoWriter)
MAX_PIXELS = 100_000.0  # |landmarks|, |translation| and scale in source pixels (a 16K frame is 15360 wide)
MAX_FACE_UNITS = 100.0  # |expression|, |reference|, template translation (the outer eye corners are 1 apart)
ROTATION_TOLERANCE = 1e-2  # |R R^T - I| of a stored rotation (extract-pose's float32 fits: about 1e-6)
MAX_TEMPLATE_DEG = 360.0  # AniPortrait template angles, degrees from the first frame
MAX_TEMPLATE_CM = MAX_FACE_UNITS * CM_PER_FACE_UNIT  # AniPortrait template translation, cm from the first frame
POSE_REMEDY = "re-create it with `a2p extract-pose`"
TEMPLATE_REMEDY = "pass a .pose file from `a2p extract-pose` or a T x 6 template"


def _bad(path, why: str, remedy: str = POSE_REMEDY) -> InputError:
    return InputError(f"not a usable motion file ({why})", subject=str(path), remedy=remedy)


def _corrupt(path: Path, why: str) -> InputError:
    return InputError(f"not a readable .pose file ({why})", subject=str(path), remedy=POSE_REMEDY)


def _numbers(path, name: str, value, shape: tuple, bound: float | None = None, flag: bool = False,
             remedy: str = POSE_REMEDY) -> np.ndarray:
    """`value` as float32 (bool when `flag`) of `shape` (frames first; None: any number), finite and within
    `bound`; InputError naming the file and the array otherwise."""
    a = np.asarray(value)
    kinds = "biu" if flag else "biuf"
    if a.dtype.kind not in kinds:
        raise _bad(path, f"{name} holds {a.dtype} values, expected {'booleans' if flag else 'numbers'}", remedy)
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = " x ".join("T" if n is None else str(n) for n in shape)
        raise _bad(path, f"{name} has shape {' x '.join(map(str, a.shape)) or 'scalar'}, expected {want}", remedy)
    if flag:
        return a.astype(bool)
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a.sum(dtype=np.float64)):  # any NaN or infinity makes the sum so (float32 cannot overflow it)
        where = np.argwhere(~np.isfinite(a))[0]
        frame = f" (frame {where[0]})" if name != "reference" else ""
        raise _bad(path, f"{name} holds NaN or infinite values{frame}", remedy)
    largest = max(float(a.max()), -float(a.min())) if a.size else 0.0
    if bound is not None and largest > bound:
        raise _bad(path, f"{name} holds {largest:.3g}, beyond the plausible {bound:g}", remedy)
    return a


def checked_motion(motion: Motion, source) -> Motion:
    """`motion` with every array checked and stored as float32 (bool flags): shapes (T frames, T >= 1), finite
    values, plausible magnitudes, rotations that are rotations, a frame rate the encoder takes. InputError naming
    `source` (a file, or what the motion is) otherwise. For motions read from files and motions given to the API."""
    for k in REQUIRED:
        if getattr(motion, k) is None:
            raise _bad(source, f"it has no {k}")
    t = len(np.asarray(motion.rotation)) if np.asarray(motion.rotation).ndim else 0
    if t == 0:
        raise _bad(source, "it has no frames")
    fps = motion.fps
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not 0 < float(fps) <= MAX_POSE_FPS:
        raise _bad(source, f"its frame rate is {fps}, expected more than 0 and at most {MAX_POSE_FPS:g}")
    size = np.asarray(motion.frame_size)
    if size.shape != (2,) or size.dtype.kind not in "iu" or (size < 0).any() or (size > MAX_PIXELS).any():
        raise _bad(source, f"its frame size is {motion.frame_size}, expected two whole numbers of pixels (0 0: none)")
    # pixels for a .pose of a video; face units for a template (no source frame)
    unit = MAX_PIXELS if tuple(int(v) for v in size) != (0, 0) else MAX_FACE_UNITS
    arrays = {
        "rotation": _numbers(source, "rotation", motion.rotation, (t, 3, 3)),
        "translation": _numbers(source, "translation", motion.translation, (t, 3), unit),
        "scale": _numbers(source, "scale", motion.scale, (t,), unit),
        "valid": _numbers(source, "valid", motion.valid, (t,), flag=True),
        "filled": _numbers(source, "filled", motion.filled, (t,), flag=True),
    }
    for name, shape, bound in (("landmarks", (t, N_LANDMARKS, 3), MAX_PIXELS),
                               ("expression", (t, N_LANDMARKS, 3), MAX_FACE_UNITS),
                               ("reference", (N_LANDMARKS, 3), MAX_FACE_UNITS)):
        if getattr(motion, name) is not None:
            arrays[name] = _numbers(source, name, getattr(motion, name), shape, bound)
    if (arrays["scale"] <= 0).any():
        raise _bad(source, f"scale must be above 0 in every frame (frame {int(np.argmax(arrays['scale'] <= 0))})")
    r = arrays["rotation"].astype(np.float64)
    error = np.abs(r @ r.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    if (error > ROTATION_TOLERANCE).any() or (np.linalg.det(r) <= 0).any():
        bad = int(np.argmax((error > ROTATION_TOLERANCE) | (np.linalg.det(r) <= 0)))
        raise _bad(source, f"rotation of frame {bad} is not a rotation matrix")
    return replace(motion, fps=float(fps), frame_size=tuple(int(v) for v in size), **arrays)


def load_pose(path: Path) -> Motion:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _corrupt(path, str(exc)[:120]) from exc
    if str(data.get("format", "")) != POSE_FORMAT:
        raise _corrupt(path, "no a2p.pose format tag")
    try:
        version = int(data.get("version", -1))
    except (TypeError, ValueError) as exc:
        raise _corrupt(path, "its version is not a number") from exc
    if version != POSE_VERSION:
        raise InputError(
            f"pose format version {version} is not supported (this a2p reads version {POSE_VERSION})",
            subject=str(path),
            remedy="re-create it with `a2p extract-pose`, or use the a2p version that wrote it",
        )
    missing = [k for k in ("fps", "frame_size", *REQUIRED) if k not in data]
    if missing:
        raise _corrupt(path, f"it has no {', '.join(missing)}")
    try:
        fps = float(data["fps"])
        meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (TypeError, ValueError) as exc:
        raise _corrupt(path, f"bad field: {str(exc)[:120]}") from exc
    if not isinstance(meta, dict):
        raise _corrupt(path, "its meta is not a JSON object")
    motion = Motion(fps=fps, frame_size=data["frame_size"], meta=meta, **{k: data.get(k) for k in _ARRAYS})
    return checked_motion(motion, path)


def load_aniportrait_template(path: Path) -> Motion:
    """AniPortrait `.npy` (T, 6) head-pose template -> Motion (relative to its first frame)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"not a readable .npy file ({str(exc)[:120]})", subject=str(path)) from exc
    remedy = TEMPLATE_REMEDY
    if arr.ndim != 2 or arr.shape[1] != 6 or len(arr) == 0:
        raise InputError(
            f"expected an AniPortrait head-pose template of shape (T, 6), got {arr.shape}",
            subject=str(path),
            remedy=remedy,
        )
    arr = _numbers(path, "the template", arr, (None, 6), remedy=remedy)
    for name, cols, bound in (("angles", slice(0, 3), MAX_TEMPLATE_DEG), ("translation", slice(3, 6), MAX_TEMPLATE_CM)):
        if float(np.abs(arr[:, cols]).max()) > bound:
            largest = float(np.abs(arr[:, cols]).max())
            raise _bad(path, f"its {name} reach {largest:.3g}, beyond the plausible {bound:g}", remedy)
    r_gl = _matrix_from_euler_xyz_extrinsic(arr[:, :3])
    rotation = _FLIP_GL @ r_gl @ _FLIP_GL
    translation = (arr[:, 3:] @ _FLIP_GL.T / CM_PER_FACE_UNIT).astype(np.float32)
    t = len(arr)
    motion = Motion(
        fps=ANIPORTRAIT_FPS,
        rotation=rotation.astype(np.float32),
        translation=translation,
        scale=np.ones(t, np.float32),
        valid=np.ones(t, bool),
        filled=np.zeros(t, bool),
        meta={"source": {"name": Path(path).name, "kind": "aniportrait-template"}},
    )
    return checked_motion(motion, path)


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
