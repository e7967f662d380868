"""Mouth measures shared by speech-driven motion (talk) and the embedded renderer (render).

    lip_gap(canon)                    (T, 478, 3) face units -> (T,) inner lip gap at the mouth's middle
    inner_lip_polygon(lm)             (478, >=2) pixels -> (K, 2) the opening between the inner lip lines
    lip_and_skin_colour(image, lm)    -> lip colour (RGB 0..1) and skin luminance, sampled at landmarks
    visible_interior(image, lm, s)    -> face units of mouth interior (cavity, teeth) the portrait shows
    open_mouth_gap(image, face)       -> the portrait's lip gap when its mouth is really open, else 0
    closed_rest(gap, shape, canon)    -> (478, 3) delta that closes an open-mouthed portrait's mouth
"""

from __future__ import annotations

import numpy as np

from a2pcli import facemesh as fm
from a2pcli.retarget import PortraitFace

OPEN_PORTRAIT = 0.03  # face units: a portrait whose lips part more than this may have a mouth interior to hide
OPEN_VISIBLE = 0.012  # face units: ... and does when its visible interior (cavity, teeth) is at least this tall
INTERIOR_DARK, INTERIOR_BRIGHT = 0.6, 1.25  # luminance relative to the lips': cavity below, teeth above
INTERIOR_SATURATION = 0.85  # teeth are also paler than the lips (saturation relative to theirs): not a highlight
REST_UPPER_SHARE = 0.35  # of an open mouth's lip gap, the share the upper lip comes down (the lower lip rises the rest)
REST_CHIN_SHARE = 0.6  # the chin's bottom rises by this share of the lower lip's rise (the jaw closes with it)


def lip_gap(canon: np.ndarray) -> np.ndarray:
    """Inner lip gap at the middle of the mouth, face units. canon: (T, 478, 3) -> (T,)"""
    return (canon[:, fm.LIPS_INNER_LOWER[3:-3], 1] - canon[:, fm.LIPS_INNER_UPPER[3:-3], 1]).mean(1)


def inner_lip_polygon(lm: np.ndarray) -> np.ndarray:
    """(478, >=2) landmarks -> (K, 2) polygon of the opening between the inner lip lines."""
    return np.concatenate([lm[fm.LIPS_INNER_UPPER, :2], lm[fm.LIPS_INNER_LOWER[::-1], :2]])


def visible_interior(image: np.ndarray, lm: np.ndarray, scale: float) -> float:
    """Mean height, face units, of the mouth interior the portrait shows: the pixels between its inner lip
    lines that are much darker (the cavity) than its lips, or brighter and paler (teeth), over the mouth's
    width.
    Landmarks often part a little on closed lips (the inner lip lines sit inside the lips): this tells an
    open mouth from such closed lips. A dark seam where the lips meet counts too: on a small face (a seam
    two pixels thick) such closed lips can still pass for an open mouth."""
    import cv2

    h, w = image.shape[:2]
    poly = inner_lip_polygon(lm)
    x0, y0 = np.clip(np.floor(poly.min(0)).astype(int) - 1, 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(poly.max(0)).astype(int) + 2, 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return 0.0
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round(poly - [x0, y0]).astype(np.int32)], 1)
    px = image[y0:y1, x0:x1][mask > 0].astype(np.float32) / 255.0
    if not len(px):
        return 0.0
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    lip, _ = lip_and_skin_colour(image, lm)
    lip_l = max(float(lip @ luma), 1e-3)
    lip_s = float(lip.max() - lip.min()) / max(float(lip.max()), 1e-3)
    lum = px @ luma
    sat = (px.max(-1) - px.min(-1)) / np.maximum(px.max(-1), 1e-3)
    teeth = (lum > INTERIOR_BRIGHT * lip_l) & (sat < INTERIOR_SATURATION * lip_s)
    shown = int(np.count_nonzero((lum < INTERIOR_DARK * lip_l) | teeth))
    width = float(np.linalg.norm(lm[fm.LIPS_INNER_UPPER[0], :2] - lm[fm.LIPS_INNER_UPPER[-1], :2]))
    return shown / max(width, 1.0) / max(float(scale), 1e-6)


def open_mouth_gap(image: np.ndarray, face: PortraitFace) -> float:
    """The portrait's inner lip gap (face units) when its mouth is open: its lip lines part by more than
    OPEN_PORTRAIT and it shows an interior (visible_interior, at least OPEN_VISIBLE); else 0, closed lips
    included whatever their landmarks say. The lip lines meeting closes the mouth."""
    gap = float(lip_gap(face.canon[None])[0])
    if gap <= OPEN_PORTRAIT:
        return 0.0
    return gap if visible_interior(image, face.landmarks, face.scale) >= OPEN_VISIBLE else 0.0


def lip_and_skin_colour(image: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, float]:
    """The portrait's lip colour (RGB 0..1) and skin luminance, sampled at landmarks."""
    h, w = image.shape[:2]

    def sample(pts: np.ndarray) -> np.ndarray:
        xy = np.clip(np.round(pts[:, :2]).astype(int), 0, [w - 1, h - 1])
        return image[xy[:, 1], xy[:, 0]].astype(np.float32) / 255.0

    outer = np.concatenate([fm.LIPS_OUTER_UPPER[2:-2], fm.LIPS_OUTER_LOWER[2:-2]])
    inner = np.concatenate([fm.LIPS_INNER_UPPER[2:-2], fm.LIPS_INNER_LOWER[2:-2]])
    lip = np.median(sample(0.5 * (lm[outer] + lm[inner])), 0)
    skin = np.median(sample(lm[fm.CHEEKS]), 0)
    lum = float(skin @ np.array([0.299, 0.587, 0.114]))
    return lip, lum


def closed_rest(open_gap: float, opening_shape: np.ndarray, canon: np.ndarray | None = None) -> np.ndarray:
    """(478, 3) delta that closes a portrait's open mouth: its lip gap `open_gap` (face units,
    open_mouth_gap; 0 for a closed mouth). The model's lips are relative to a closed mouth at rest: on an
    open-mouthed portrait they start from this rest, so the mouth closes in silence and between syllables as a
    speaker's does, instead of never closing further than the portrait.

    With the portrait's canonical landmarks `canon` (478, 3), each lip closes as a whole, its outer line with
    its inner one, column by column across the mouth: the upper lip comes down by REST_UPPER_SHARE of the gap,
    the lower lip rises by the rest, and the chin follows the lower lip (less towards its bottom). A smile that
    shows its teeth closes over them with lips of their own thickness. Without `canon`: the gap taken back
    along the model's mean opening (`Audio2Motion.opening_shape()`), which moves the inner lip lines only."""
    gap = float(max(open_gap, 0.0))
    if canon is None or gap <= 0.0:
        return (-gap * opening_shape).astype(np.float32)
    cols = np.clip(canon[fm.LIPS_INNER_LOWER, 1] - canon[fm.LIPS_INNER_UPPER, 1], 0.0, None)  # (11,), corners ~0
    down, up = REST_UPPER_SHARE * cols, (1.0 - REST_UPPER_SHARE) * cols
    rest = np.zeros_like(canon, dtype=np.float32)
    rest[fm.LIPS_INNER_UPPER[1:-1], 1] += down[1:-1]
    rest[fm.LIPS_OUTER_UPPER[1:-1], 1] += down[1:-1]
    rest[fm.LIPS_INNER_LOWER[1:-1], 1] -= up[1:-1]
    rest[fm.LIPS_OUTER_LOWER[1:-1], 1] -= up[1:-1]
    # the chin: points below the lower lip and between the mouth corners rise with it, less towards the bottom
    lip_y = float(canon[fm.LIPS_OUTER_LOWER, 1].max())
    bottom = float(canon[fm.FACE_OVAL, 1].max())
    left, right = float(canon[fm.LIPS_OUTER_UPPER, 0].min()), float(canon[fm.LIPS_OUTER_UPPER, 0].max())
    chin = np.setdiff1d(np.flatnonzero((canon[:, 1] > lip_y) & (canon[:, 0] > left) & (canon[:, 0] < right)), fm.LIPS)
    depth = np.clip((canon[chin, 1] - lip_y) / max(bottom - lip_y, 1e-6), 0.0, 1.0)
    rest[chin, 1] -= float(up[3:-3].mean()) * (1.0 - (1.0 - REST_CHIN_SHARE) * depth)
    return rest
