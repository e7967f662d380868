"""The person and the background of a portrait, separated once per portrait so that the renderer moves
head, hair and neck and keeps the background still.

MediaPipe's selfie segmentation (its general model, shipped in the mediapipe wheel: nothing is downloaded)
gives the person's alpha over the renderer's working region. The background behind the person is filled
from the surrounding background (OpenCV inpainting at a low resolution: only what a moving head uncovers
is ever seen of it). The renderer then warps the person, premultiplied by its alpha, and lays it over the
still background plate:

    out = warp(fg) + (1 - warp(alpha)) * plate,   fg = image - (1 - alpha) * plate

With no motion this gives back the image (soft outlines included, within a grey level of rounding): the
composite adds no seam.
Where segmentation finds no plausible person (some cartoons and paintings), `separate` returns None and
says why; the renderer then warps the background with the person as before.

    bd, why = separate(crop, landmarks, unit)      # crop: (H, W, 3) uint8 RGB; landmarks: (478, 3) crop pixels
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2pcli import facemesh as fm

SEGMENT_MODEL = 0  # MediaPipe selfie segmentation: 0 = general (256x256 square input), 1 = landscape (144x256)
PERSON_LO, PERSON_HI = 0.2, 0.8  # segmentation confidence mapped to alpha 0..1 between these
RIM = (2.0, 0.015)  # pixels plus face units around the segmented person ...
RIM_ALPHA = 0.5  # ... that move with it at this alpha at least (its outline's anti-aliased pixels)
FACE_COVERED = 0.85  # fraction of the face oval the segmentation must call person, else it is not trusted
FACE_FEATHER = 0.03  # face units: the face oval is always person, with this soft edge
HOLE_GROW = 0.1  # face units: what is inpainted reaches this far past the person's last trace of alpha
FILL_UNIT_PX = 24.0  # pixels per face unit at which the background is inpainted (then scaled up)
FILL_RADIUS = 3  # pixels at that scale: OpenCV inpainting neighbourhood
ALPHA_FILLED = 0.05  # across the person's soft edge the plate goes from the image (alpha 0) to the fill (this alpha)


@dataclass
class Backdrop:
    """The person's alpha and the background plate over one image region."""

    alpha: np.ndarray  # (H, W) float32 0..1, 1 = person
    plate: np.ndarray  # (H, W, 3) uint8 RGB: the image where there is no person, filled behind it
    layer: np.ndarray  # (H, W, 4) uint8: the person premultiplied by its alpha (image - (1 - alpha) * plate,
    # at least 0), and the alpha (0..255): one 4-channel image that the renderer warps in one pass

    @classmethod
    def of(cls, image: np.ndarray, alpha: np.ndarray, plate: np.ndarray) -> Backdrop:
        fg = image.astype(np.float32) - (1.0 - alpha[..., None]) * plate.astype(np.float32)
        layer = np.dstack([np.clip(fg + 0.5, 0, 255), alpha * 255.0 + 0.5]).astype(np.uint8)
        return cls(alpha.astype(np.float32), plate, layer)

    def composite(self, warped: np.ndarray, out: np.ndarray) -> None:
        """out (H, W, 3) uint8 = the warped layer (H, W, 4 uint8) over the plate."""
        import cv2

        behind = cv2.cvtColor(cv2.bitwise_not(cv2.extractChannel(warped, 3)), cv2.COLOR_GRAY2RGB)
        cv2.add(cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB), cv2.multiply(self.plate, behind, scale=1 / 255), dst=out)


def segment_person(image: np.ndarray) -> np.ndarray | None:
    """(H, W) float32 0..1 person confidence from MediaPipe's selfie segmentation, or None when mediapipe is
    not installed (a machine that renders stored motion without it)."""
    from a2pcli.landmarks import quiet_native_stderr

    try:
        with quiet_native_stderr():
            from mediapipe.python.solutions import selfie_segmentation
    except Exception:  # ImportError, or a broken native library
        return None
    with quiet_native_stderr(), selfie_segmentation.SelfieSegmentation(model_selection=SEGMENT_MODEL) as seg:
        mask = seg.process(np.ascontiguousarray(image)).segmentation_mask
    return None if mask is None else np.clip(mask.astype(np.float32), 0.0, 1.0)


def _face_mask(shape: tuple[int, int], landmarks: np.ndarray, unit: float) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(landmarks[fm.FACE_OVAL, :2] * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(mask, (0, 0), max(0.5, FACE_FEATHER * unit))


def person_alpha(prob: np.ndarray, landmarks: np.ndarray, unit: float) -> tuple[np.ndarray | None, str]:
    """Alpha (H, W) float32 from the segmentation's confidence, the face oval always included; None and the
    reason when the segmentation misses the face (then it cannot be trusted with hair and neck either)."""
    face = _face_mask(prob.shape, landmarks, unit)
    inside = face > 0.5
    if not inside.any():
        return None, "the face is outside the segmented region"
    covered = float(np.mean(prob[inside] >= 0.5))
    if covered < FACE_COVERED:
        return None, f"the segmentation found the person on only {covered:.0%} of the face"
    t = np.clip((prob - PERSON_LO) / (PERSON_HI - PERSON_LO), 0.0, 1.0)
    alpha = np.maximum(t * t * (3 - 2 * t), face).astype(np.float32)
    # the segmentation's edge stops short of the outline's anti-aliased pixels: a rim of half alpha takes them
    # with the person (else they stay on the background plate, a faint outline where the head was)
    import cv2

    r = int(round(RIM[0] + RIM[1] * unit))
    rim = cv2.dilate(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    return np.maximum(alpha, RIM_ALPHA * rim), ""


def fill_background(image: np.ndarray, alpha: np.ndarray, unit: float) -> np.ndarray:
    """(H, W, 3) uint8: `image` with the person replaced by the surrounding background, inpainted (from
    outside the person's alpha grown by HOLE_GROW) at FILL_UNIT_PX pixels per face unit and scaled back up."""
    import cv2

    h, w = alpha.shape
    grow = max(1, int(round(HOLE_GROW * unit)))
    hole = cv2.dilate((alpha > 1e-3).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    if not hole.any():
        return image.copy()
    if hole.all():  # nothing around to fill from: the image's own mean colour
        return np.broadcast_to(image.reshape(-1, 3).mean(0).astype(np.uint8), image.shape).copy()
    k = min(1.0, FILL_UNIT_PX / max(unit, 1e-6))
    sw, sh = max(8, int(round(w * k))), max(8, int(round(h * k)))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    small_hole = (cv2.resize(hole.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    filled = cv2.inpaint(small, small_hole, FILL_RADIUS, cv2.INPAINT_TELEA)
    fill = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    # the plate is the image wherever there is no person (alpha 0: the composite gives the image back there),
    # the fill where there is, and a blend across the person's soft edge; never so bright that the person's
    # premultiplied colour would go below 0 (the composite gives back the image exactly at rest)
    t = np.clip(alpha / ALPHA_FILLED, 0.0, 1.0)[..., None]
    img = image.astype(np.float32)
    plate = img + (t * t * (3 - 2 * t)) * (fill - img)
    plate = np.minimum(plate, (img + 0.5) / np.maximum(1.0 - alpha[..., None], 1e-6))  # within rounding at rest
    return np.clip(plate + 0.5, 0, 255).astype(np.uint8)


def separate(image: np.ndarray, landmarks: np.ndarray, unit: float) -> tuple[Backdrop | None, str]:
    """The person's alpha and the background plate of `image` (the renderer's working region), or None and
    why not. landmarks: (478, 3) pixels of `image`; unit: pixels per face unit."""
    prob = segment_person(image)
    if prob is None:
        return None, "mediapipe is not installed"
    alpha, why = person_alpha(prob, landmarks, unit)
    if alpha is None:
        return None, why
    return Backdrop.of(image, alpha, fill_background(image, alpha, unit)), ""
