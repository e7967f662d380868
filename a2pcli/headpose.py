"""Head pose by a rigid (similarity) fit of the 3D landmarks to a reference face, and the
expression left once the pose is removed.

Frames: image space, x right, y down, z into the screen, pixels. The reference face
(`face-reference` model) is frontal, centred, in "face units": the outer eye corners are 1 apart.

    fit_pose(lm, ref, w)   lm: (T, 478, 3) pixels -> R (T, 3, 3), t (T, 3) pixels, s (T,) pixels per unit
                           such that lm ~= s * ref @ R.T + t
    canonical(lm, R, t, s) -> (T, 478, 3) landmarks with the pose removed, in face units
    euler_from_matrix(R)   -> (T, 3) yaw, pitch, roll in degrees, R = Ry(yaw) @ Rx(pitch) @ Rz(roll)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli.landmarks import LEFT_EYE_OUTER, N_LANDMARKS, RIGHT_EYE_OUTER

REFERENCE_MODEL = "face-reference"
REFERENCE_FILE = "face_reference.npz"
EPS = 1e-8
# Centimetres per face unit in MediaPipe's metric face space (face geometry, AniPortrait's lmks3d and head-pose
# templates). A face unit is what `fit_pose` measures: the scale of the weighted similarity fit of the reference
# face, so the same fit of the reference onto metric meshes gives centimetres per face unit. On FaceLandmarker's
# four meshes of tests/test_headpose.py it gives 8.84, 8.52, 8.63 and 8.46 (mean 8.61); the distance of the outer
# eye corners alone varies more from face to face (8.5 to 10.7 cm), which is why it is not used.
CM_PER_FACE_UNIT = 8.61


@dataclass(frozen=True)
class FaceReference:
    mean: np.ndarray  # (478, 3) float32, face units, frontal
    weights: np.ndarray  # (478,) float32, >= 0, sum 1: how rigid each landmark is (fit weights)


def load_reference(path: Path | None = None) -> FaceReference:
    """The shipped reference face (verified against the registry), or one from `path`."""
    if path is None:
        from a2pcli import registry

        folder, _ = registry.resolve(REFERENCE_MODEL)
        path = folder / REFERENCE_FILE
    with np.load(path, allow_pickle=False) as z:
        mean, weights = z["mean"].astype(np.float32), z["weights"].astype(np.float32)
    if mean.shape != (N_LANDMARKS, 3) or weights.shape != (N_LANDMARKS,):
        from a2pcli.errors import ModelError

        raise ModelError(f"reference face has shape {mean.shape}", subject=str(path), remedy="reinstall a2p")
    return FaceReference(mean, weights / weights.sum())


def umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted similarity transform per frame, dst ~= s * src @ R.T + t.

    src: (N, 3) or (T, N, 3); dst: (T, N, 3); w: (N,) summing to 1.
    Returns R (T, 3, 3) proper rotations, t (T, 3), s (T,)."""
    src = np.broadcast_to(src, dst.shape).astype(np.float64)
    dst = dst.astype(np.float64)
    wv = w.astype(np.float64)[None, :, None]
    mu_s, mu_d = (src * wv).sum(1), (dst * wv).sum(1)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    cov = np.einsum("tni,tnj->tij", xd * wv, xs)  # (T, 3, 3)
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones((len(d), 3))
    fix[:, 2] = d
    r = u @ (fix[:, :, None] * vt)
    var_s = (xs**2 * wv).sum((1, 2))
    s = (sig * fix).sum(1) / np.maximum(var_s, EPS)
    t = mu_d - s[:, None] * np.einsum("tij,tj->ti", r, mu_s)
    return r.astype(np.float32), t.astype(np.float32), s.astype(np.float32)


def fit_pose(lm: np.ndarray, ref: FaceReference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lm: (T, 478, 3) pixels -> R (T, 3, 3), t (T, 3), s (T,)"""
    return umeyama(ref.mean, lm, ref.weights)


def canonical(lm: np.ndarray, r: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Remove the pose: (T, 478, 3) pixels -> (T, 478, 3) face units, aligned to the reference."""
    centred = lm - t[:, None, :]
    return np.einsum("tnj,tji->tni", centred, r) / s[:, None, None]


def apply_pose(canon: np.ndarray, r: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Inverse of `canonical`: (T, 478, 3) face units -> pixels."""
    return s[:, None, None] * np.einsum("tni,tji->tnj", canon, r) + t[:, None, :]


def euler_from_matrix(r: np.ndarray) -> np.ndarray:
    """(T, 3, 3) -> (T, 3) degrees (yaw, pitch, roll) for R = Ry(yaw) @ Rx(pitch) @ Rz(roll)."""
    pitch = np.arcsin(np.clip(-r[:, 1, 2], -1.0, 1.0))
    yaw = np.arctan2(r[:, 0, 2], r[:, 2, 2])
    roll = np.arctan2(r[:, 1, 0], r[:, 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], axis=1)).astype(np.float32)


def matrix_from_euler(e: np.ndarray) -> np.ndarray:
    """(T, 3) degrees (yaw, pitch, roll) -> (T, 3, 3); inverse of euler_from_matrix."""
    a, b, c = np.radians(np.asarray(e, np.float64)).T
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    one, zero = np.ones_like(a), np.zeros_like(a)
    ry = np.stack([ca, zero, sa, zero, one, zero, -sa, zero, ca], 1).reshape(-1, 3, 3)
    rx = np.stack([one, zero, zero, zero, cb, -sb, zero, sb, cb], 1).reshape(-1, 3, 3)
    rz = np.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], 1).reshape(-1, 3, 3)
    return (ry @ rx @ rz).astype(np.float32)


# ---- building the reference (used by a2pcli.tools.build_face_reference) ----

def frontal_frame(shape: np.ndarray) -> np.ndarray:
    """Rotation taking a face shape (478, 3) to the frontal frame: x from the subject's right eye
    corner to the left one, y from forehead to chin (down), z = x cross y (into the screen)."""
    from a2pcli.landmarks import CHIN, FOREHEAD

    x = shape[LEFT_EYE_OUTER] - shape[RIGHT_EYE_OUTER]
    x = x / np.linalg.norm(x)
    y = shape[CHIN] - shape[FOREHEAD]
    y = y - x * (y @ x)
    y = y / np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])  # rows: new axes


def normalise_shape(shape: np.ndarray) -> np.ndarray:
    """Centre, rotate to the frontal frame, and scale so the outer eye corners are 1 apart."""
    shape = shape - shape.mean(0)
    shape = shape @ frontal_frame(shape).T
    return shape / np.linalg.norm(shape[LEFT_EYE_OUTER] - shape[RIGHT_EYE_OUTER])


def generalised_procrustes(shapes: np.ndarray, iterations: int = 5) -> np.ndarray:
    """shapes: (K, 478, 3) -> mean shape (478, 3), normalised frontal."""
    uniform = np.full(N_LANDMARKS, 1.0 / N_LANDMARKS, np.float32)
    mean = normalise_shape(shapes[0])
    for _ in range(iterations):
        r, t, s = umeyama(mean, shapes, uniform)
        mean = normalise_shape(canonical(shapes, r, t, s).mean(0))
    return mean.astype(np.float32)
