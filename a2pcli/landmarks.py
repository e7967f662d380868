"""MediaPipe face mesh: 478 landmarks per face, in pixels.

    FaceMeshDetector(video=True).detect(frame) -> list of (478, 3) float32 arrays, one per face,
        x, y in pixels of `frame`, z in the same pixel scale (MediaPipe's z times the frame width),
        smaller z = closer to the camera.
The mesh's own triangulation and named landmark groups live here too, for the later stages.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np

from a2pcli.errors import EnvironmentProblem

N_LANDMARKS = 478  # face mesh 468 + 10 iris points (refine_landmarks=True)
MAX_FACES = 2  # faces tracked per frame: enough to notice a second face and follow the largest
MIN_DETECTION_CONFIDENCE = 0.5
MIN_TRACKING_CONFIDENCE = 0.5
NO_FACE_HINT = "use a picture where one face is visible, roughly frontal, at least about 100 pixels tall"

# Landmark indices (MediaPipe face mesh topology). "Right"/"left" are the subject's.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
RIGHT_EYE_INNER, LEFT_EYE_INNER = 133, 362
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM = 159, 145
LEFT_EYE_TOP, LEFT_EYE_BOTTOM = 386, 374
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence the C++ logging MediaPipe/TFLite print on fd 2 while graphs are built, so that
    stderr carries only a2p's own progress (JSON lines must stay parseable)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _face_mesh_module():
    try:
        with quiet_native_stderr():
            from mediapipe.python.solutions import face_mesh
    except Exception as exc:  # ImportError, or a broken native library
        raise EnvironmentProblem(
            f"mediapipe cannot be imported ({exc})",
            subject="mediapipe",
            remedy="pip install mediapipe==0.10.21, then run `a2p doctor`",
        ) from exc
    return face_mesh


class FaceMeshDetector:
    """One MediaPipe FaceMesh graph. `video=True` tracks across frames (fast); False treats every
    call as an unrelated image (detection each time)."""

    def __init__(self, video: bool = True, max_faces: int = MAX_FACES):
        face_mesh = _face_mesh_module()
        with quiet_native_stderr():
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=not video,
                max_num_faces=max_faces,
                refine_landmarks=True,
                min_detection_confidence=MIN_DETECTION_CONFIDENCE,
                min_tracking_confidence=MIN_TRACKING_CONFIDENCE,
            )
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))  # builds the graph now, quietly

    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        """frame: (H, W, 3) uint8 RGB -> list of (478, 3) float32 landmark arrays in pixels."""
        h, w = frame.shape[:2]
        with quiet_native_stderr():  # MediaPipe warns on fd 2 from inside process()
            res = self._mesh.process(frame)
        if not res.multi_face_landmarks:
            return []
        scale = np.array([w, h, w], np.float32)
        out = []
        for face in res.multi_face_landmarks:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], np.float32)
            out.append(pts * scale)
        return out

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bbox(lm: np.ndarray) -> np.ndarray:
    """(478, 3) -> [x0, y0, x1, y1]"""
    return np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], np.float32)


def face_size(lm: np.ndarray) -> float:
    """Diagonal of the landmark box, pixels."""
    b = bbox(lm)
    return float(np.hypot(b[2] - b[0], b[3] - b[1]))


def mouth_opening(lm: np.ndarray) -> np.ndarray:
    """Inner-lip gap over eye-corner distance. lm: (..., 478, 3) -> (...)"""
    gap = np.linalg.norm(lm[..., UPPER_LIP_INNER, :2] - lm[..., LOWER_LIP_INNER, :2], axis=-1)
    eyes = np.linalg.norm(lm[..., RIGHT_EYE_OUTER, :2] - lm[..., LEFT_EYE_OUTER, :2], axis=-1)
    return gap / np.maximum(eyes, 1e-6)


def detect_image(image: np.ndarray, max_faces: int = 4) -> list[np.ndarray]:
    """Faces in a still image, largest first. When the whole picture shows no face (a small face
    in a large image), overlapping tiles are searched and the landmarks mapped back."""
    with FaceMeshDetector(video=False, max_faces=max_faces) as det:
        faces = det.detect(image)
        if not faces:
            faces = _detect_tiled(det, image)
    return sorted(faces, key=face_size, reverse=True)


TILE_FRACTIONS = (0.5, 0.3)  # tile side as a fraction of the image's short side, coarse to fine


def _detect_tiled(det: FaceMeshDetector, image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]
    for frac in TILE_FRACTIONS:
        side = int(min(h, w) * frac)
        if side < 64:
            break
        step = side // 2
        found = []
        for y0 in range(0, max(1, h - side + step), step):
            for x0 in range(0, max(1, w - side + step), step):
                tile = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
                for lm in det.detect(tile):
                    found.append(lm + np.array([x0, y0, 0], np.float32))
        if found:
            return _dedupe(found)
    return []


def _dedupe(faces: list[np.ndarray]) -> list[np.ndarray]:
    """Drop faces found twice in overlapping tiles (keep the larger of two whose centres are close)."""
    faces = sorted(faces, key=face_size, reverse=True)
    kept: list[np.ndarray] = []
    for lm in faces:
        c = lm[:, :2].mean(0)
        if all(np.linalg.norm(c - k[:, :2].mean(0)) > 0.3 * face_size(k) for k in kept):
            kept.append(lm)
    return kept
