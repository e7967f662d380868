"""Motion retargeting: a driving motion, taken relative to one of its frames, applied to a portrait.

The portrait keeps its own face shape: what moves is the driving face's *change* since the reference
frame: its head rotation, its translation and scale in units of its own face size, and its expression
change in the canonical face space (face units, pose removed), scaled to the portrait's face.
Eyelids retarget by openness ratio so that a driver's full blink closes the portrait's eyes whatever
their size; lips never cross.

    face = portrait_face(landmarks, reference)       # the portrait's pose and canonical shape
    tgt = retarget(face, motion, RetargetOptions())  # FaceTargets: (T, 478, 3) landmarks + per-frame pose
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2pcli import facemesh as fm
from a2pcli.errors import InputError
from a2pcli.headpose import FaceReference, apply_pose, canonical, fit_pose
from a2pcli.motion import Motion

REGIONS = ("all", "pose", "expression", "lips", "eyes")
EYE_RADIUS = 0.3  # face units: the soft extent of an eye region around the iris centre
LIPS_TOP = 0.12  # face units below the face centre where the mouth region begins (the nose base is ~0.14)
MIN_GAP = 0.0  # face units: inner lips may touch, never cross


@dataclass(frozen=True)
class PortraitFace:
    landmarks: np.ndarray  # (478, 3) pixels
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    scale: float  # pixels per face unit
    canon: np.ndarray  # (478, 3) face units, pose removed


@dataclass(frozen=True)
class RetargetOptions:
    region: str = "all"
    pose_scale: float = 1.0
    expression_scale: float = 1.0
    ref_frame: int = 0


@dataclass
class FaceTargets:
    """What the renderers draw: the portrait's landmarks and head pose in every frame."""

    landmarks: np.ndarray  # (T, 478, 3) pixels of the portrait
    rotation: np.ndarray  # (T, 3, 3)
    translation: np.ndarray  # (T, 3)
    scale: np.ndarray  # (T,)

    def __len__(self) -> int:
        return len(self.landmarks)

    def slice(self, start: int, stop: int) -> FaceTargets:
        return FaceTargets(self.landmarks[start:stop], self.rotation[start:stop], self.translation[start:stop],
                           self.scale[start:stop])

    def resample(self, n: int, src_fps: float, dst_fps: float) -> FaceTargets:
        """`n` frames at `dst_fps`, by linear interpolation in time (rotations re-orthonormalised)."""
        t = np.arange(n) * (src_fps / dst_fps)
        i0 = np.clip(np.floor(t).astype(int), 0, len(self) - 1)
        i1 = np.clip(i0 + 1, 0, len(self) - 1)
        a = (t - np.floor(t)).astype(np.float32)

        def lerp(v: np.ndarray) -> np.ndarray:
            w = a.reshape(-1, *([1] * (v.ndim - 1)))
            return (v[i0] * (1 - w) + v[i1] * w).astype(np.float32)

        u, _, vt = np.linalg.svd(lerp(self.rotation))
        rot = (u @ vt).astype(np.float32)
        return FaceTargets(lerp(self.landmarks), rot, lerp(self.translation), lerp(self.scale))


def portrait_face(landmarks: np.ndarray, ref: FaceReference) -> PortraitFace:
    r, t, s = fit_pose(landmarks[None], ref)
    canon = canonical(landmarks[None], r, t, s)[0]
    return PortraitFace(landmarks.astype(np.float32), r[0], t[0], float(s[0]), canon)


def expression_weights(ref_mean: np.ndarray, region: str) -> np.ndarray:
    """(478,) weight in [0, 1] of the expression change each landmark takes for `region`."""
    n = len(ref_mean)
    if region in ("all", "expression"):
        return np.ones(n, np.float32)
    if region == "pose":
        return np.zeros(n, np.float32)
    if region == "eyes":
        centres = ref_mean[[fm.RIGHT_IRIS[0], fm.LEFT_IRIS[0]], :2]
        d = np.linalg.norm(ref_mean[:, None, :2] - centres[None], axis=-1).min(1)
        return np.clip(1.5 - d / EYE_RADIUS, 0.0, 1.0).astype(np.float32)
    if region == "lips":
        y = ref_mean[:, 1]
        return np.clip((y - LIPS_TOP) / 0.15, 0.0, 1.0).astype(np.float32)
    raise InputError(f"unknown region {region!r}", subject="--region", remedy=f"use one of {', '.join(REGIONS)}")


def rotation_power(r: np.ndarray, k: float) -> np.ndarray:
    """R**k for (T, 3, 3) rotations (axis-angle scaling)."""
    if k == 1.0:
        return r
    cos = np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    axis = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], 1)
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    axis = np.where(norm > 1e-9, axis / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))
    a = angle * k
    kx = np.zeros_like(r)
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    kx[:, 1, 0], kx[:, 2, 0], kx[:, 2, 1] = axis[:, 2], -axis[:, 1], axis[:, 0]
    eye = np.eye(3)[None]
    return (eye + np.sin(a)[:, None, None] * kx + (1 - np.cos(a))[:, None, None] * (kx @ kx)).astype(np.float32)


def _openness(canon: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Mean lid (or lip) gap over the contour's inner points, face units. canon: (..., 478, 3)."""
    return (canon[..., lower[1:-1], 1] - canon[..., upper[1:-1], 1]).mean(-1)


EYE_PAIRS = ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER))


def _retarget_eyelids(base: np.ndarray, delta: np.ndarray, drive_ref: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Scale each eye's lid and skin-ring deltas by the ratio of the portrait's opening to the driver's
    reference opening, so a full blink closes any eye; the lids never cross."""
    delta = delta.copy()
    for upper, lower in EYE_PAIRS:
        o_portrait = float(_openness(base, upper, lower))
        o_driver = float(_openness(drive_ref, upper, lower))
        ratio = np.clip(o_portrait / max(o_driver, 1e-3), 0.3, 3.0)
        ring = fm.RIGHT_EYE_RING_UPPER if upper is fm.RIGHT_EYE_UPPER else fm.LEFT_EYE_RING_UPPER
        lids = np.concatenate([upper, lower, ring])
        delta[:, lids, 1] *= ratio
    return delta


def no_crossing(canon: np.ndarray) -> np.ndarray:
    """Lower inner lip / lower lid never above the upper one (T, 478, 3) in place."""
    for upper, lower in ((fm.LIPS_INNER_UPPER, fm.LIPS_INNER_LOWER),) + EYE_PAIRS:
        u, lo = canon[:, upper[1:-1], 1], canon[:, lower[1:-1], 1]
        cross = lo < u + MIN_GAP
        mid = (u + lo) / 2
        canon[:, upper[1:-1], 1] = np.where(cross, mid, u)
        canon[:, lower[1:-1], 1] = np.where(cross, mid, lo)
    return canon


def retarget(face: PortraitFace, motion: Motion, opts: RetargetOptions, ref_mean: np.ndarray) -> FaceTargets:
    """The portrait's landmarks and pose for every frame of `motion`."""
    if opts.region not in REGIONS:
        expression_weights(ref_mean, opts.region)  # raises the error
    n = len(motion)
    if not 0 <= opts.ref_frame < n:
        raise InputError(f"reference frame {opts.ref_frame} is outside the motion's {n} frames",
                         subject="--ref-frame", remedy=f"use 0..{n - 1}")
    k = opts.ref_frame
    pose_k = 0.0 if opts.region in ("expression", "lips", "eyes") else opts.pose_scale

    # head pose: the driver's rotation since frame k, applied to the portrait's own
    rel = motion.rotation @ motion.rotation[k].T
    rot = rotation_power(rel, pose_k) @ face.rotation
    if motion.frame_size == (0, 0) or motion.landmarks is None:
        unit = 1.0  # templates: translation already in face units
        scale_ratio = np.ones(n, np.float32)
    else:
        unit = float(motion.scale[k])
        scale_ratio = motion.scale / max(unit, 1e-6)
    shift = (motion.translation - motion.translation[k]) / max(unit, 1e-6) * face.scale
    shift[:, 2] = 0.0
    trans = face.translation[None] + pose_k * shift
    scale = face.scale * scale_ratio ** pose_k

    canon = np.repeat(face.canon[None], n, 0)
    if motion.expression is not None and opts.region != "pose" and opts.expression_scale > 0:
        w = expression_weights(ref_mean, opts.region)
        drive = motion.expression
        delta = (drive - drive[k][None]) * (opts.expression_scale * w)[None, :, None]
        drive_ref = (motion.reference if motion.reference is not None else ref_mean) + drive[k]
        delta = _retarget_eyelids(face.canon, delta, drive_ref, w)
        canon = no_crossing(canon + delta)
    lm = apply_pose(canon.astype(np.float32), rot.astype(np.float32), trans.astype(np.float32),
                    scale.astype(np.float32))
    return FaceTargets(lm, rot.astype(np.float32), trans.astype(np.float32), scale.astype(np.float32))
