"""The portrait loader: an image (a file or an array) at its output framing, and its face.

    portrait = load_portrait("face.png", PortraitOptions(crop=True, size=512))
    portrait.image  (H, W, 3) uint8 RGB at the output's framing and resolution (even sides)
    portrait.face   retarget.PortraitFace: its landmarks (pixels of portrait.image), pose and canonical shape
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from a2pcli.errors import InputError, NoFaceError
from a2pcli.progress import Reporter
from a2pcli.retarget import PortraitFace

CROP_SIDE = 4.2  # face units: side of the face-centred square of --crop
CROP_RAISE = 0.25  # face units: the crop centre sits this far above the face centre (room for hair)
MIN_FACE_PX = 10.0  # outer eye corners at least this far apart, in the picture and in the video: a face drawn from
# fewer pixels is a blur (a 32-pixel face: 7 px; renders of 7, 10 and 14 px compared by eye)
SMALL_FACE_PX = 20.0  # below this a note says the face shows little detail (real portraits: 45 px and more)
ARRAY_NAME = "<image array>"  # how an image given as an array is named in messages


@dataclass(frozen=True)
class PortraitOptions:
    crop: bool = False  # a face-centred square instead of the whole picture
    size: int = 512  # px, side of the square with crop (AniPortrait's render resolution)
    max_size: int = 1024  # px, longest side without crop: larger portraits shrink
    face_index: int | None = None  # which face when the picture shows several, largest first; None: the largest


@dataclass
class Portrait:
    image: np.ndarray  # (H, W, 3) uint8 at output framing
    face: PortraitFace
    source: Path
    faces_found: int
    notes: list[str] = field(default_factory=list)


def even(n: float) -> int:
    """The even integer at or below n, at least 2 (yuv420p needs even sides)."""
    return max(2, int(n) // 2 * 2)


def read_image(source: Path | str | np.ndarray) -> tuple[np.ndarray, Path]:
    """(H, W, 3) uint8 RGB from a file or an array (RGB, or gray (H, W)), and the name to report it by."""
    if not isinstance(source, np.ndarray):
        from a2pcli.media import load_image

        return load_image(Path(source)), Path(source)
    image = np.asarray(source)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}",
                         subject=ARRAY_NAME)
    return np.ascontiguousarray(image), Path(ARRAY_NAME)


def load_portrait(source: Path | str | np.ndarray, opts: PortraitOptions = PortraitOptions(),
                  reporter: Reporter | None = None) -> Portrait:
    """The portrait at its output framing and resolution, with its face's landmarks and pose."""
    import cv2

    from a2pcli.headpose import fit_pose, load_reference
    from a2pcli.landmarks import NO_FACE_HINT, detect_image
    from a2pcli.retarget import portrait_face

    reporter = reporter or Reporter()
    reporter.stage("find the face", total=1)
    image, path = read_image(source)
    faces = detect_image(image)
    if not faces:
        raise NoFaceError("no face found in the portrait", subject=str(path), remedy=NO_FACE_HINT)
    notes = []
    if opts.face_index is not None:
        if opts.face_index >= len(faces):
            raise InputError(f"--face-index {opts.face_index}, but the portrait shows {len(faces)} face(s)",
                             subject=str(path), remedy=f"use 0..{len(faces) - 1} (largest first)")
        lm = faces[opts.face_index]
    else:
        lm = faces[0]
        if len(faces) > 1:
            notes.append(f"{len(faces)} faces in the portrait: animating the largest (choose with --face-index)")
            reporter.warn(notes[-1])
    ref = load_reference()
    h, w = image.shape[:2]
    if opts.crop:
        _, t, s = fit_pose(lm[None], ref)
        # the face-centred square, moved (and if need be shrunk) to stay inside the picture
        side = min(CROP_SIDE * float(s[0]), float(w), float(h))
        cx, cy = float(t[0, 0]), float(t[0, 1]) - CROP_RAISE * float(s[0])
        x0 = float(np.clip(cx - side / 2, 0, w - side))
        y0 = float(np.clip(cy - side / 2, 0, h - side))
        k = opts.size / side
        out = even(opts.size)
        m = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]], np.float32)
        image = cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        lm = np.concatenate([(lm[:, :2] - [x0, y0]) * k, lm[:, 2:] * k], 1).astype(np.float32)
    else:
        k = min(1.0, opts.max_size / max(h, w))
        nw, nh = even(w * k), even(h * k)
        if (nw, nh) != (w, h):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            sx, sy = nw / w, nh / h
            lm = (lm * np.array([sx, sy, (sx + sy) / 2], np.float32)).astype(np.float32)
    face = portrait_face(lm, ref)
    check_face_size(face.scale, face.scale / k, path, notes, reporter)
    reporter.advance()
    return Portrait(np.ascontiguousarray(image), face, path, len(faces), notes)


def check_face_size(in_video: float, in_picture: float, path: Path, notes: list[str], reporter: Reporter) -> None:
    """The face's size (pixels per face unit: the distance of the outer eye corners) in the video and in the
    picture it comes from: InputError below MIN_FACE_PX, a note (and a warning) below SMALL_FACE_PX."""
    size = min(in_video, in_picture)
    shrunk = in_video < in_picture  # --max-size shrank the picture
    where = "in the video" if shrunk else "in the picture"
    if size < MIN_FACE_PX:
        raise InputError(f"the face is too small to animate: its eyes are {int(size)} px apart (outer corners) "
                         f"{where}, at least {MIN_FACE_PX:g} px are needed", subject=str(path),
                         remedy="raise --max-size, or add --crop" if shrunk else
                         "use a picture where the face is larger")
    if size < SMALL_FACE_PX:
        notes.append(f"the face is small ({int(size)} px between the outer eye corners {where}): the video shows "
                     f"little detail; {SMALL_FACE_PX:g} px or more look better")
        reporter.warn(notes[-1])
