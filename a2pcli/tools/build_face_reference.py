"""Build the `face-reference` model: a frontal mean face (478 x 3) and per-landmark rigidity
weights, from talking-face videos.

    python -m a2pcli.tools.build_face_reference VIDEO_DIR [VIDEO_DIR ...] -o models/face-reference

1. MediaPipe landmarks of FRAMES_PER_VIDEO frames spread over each video.
2. Generalised Procrustes analysis over all frames -> mean shape, made frontal.
3. Weights: landmarks that move little relative to the head within a video (forehead, nose
   bridge, eye corners, temples) weigh most; lips, jaw and irises weigh least. Two rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from a2pcli.headpose import canonical, euler_from_matrix, generalised_procrustes, matrix_from_euler, umeyama
from a2pcli.landmarks import FaceMeshDetector
from a2pcli.media import probe_video, stream_frames

FRAMES_PER_VIDEO = 40
DETECT_SIDE = 720  # decode size cap for speed; landmarks are scale-free after Procrustes
WEIGHT_FLOOR = 1e-4  # variance floor (face units^2) so no landmark gets an unbounded weight
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}


def video_landmarks(path: Path) -> np.ndarray | None:
    info = probe_video(path)
    step = max(1, info.est_frames // FRAMES_PER_VIDEO)
    size = None
    if max(info.width, info.height) > DETECT_SIDE:
        k = DETECT_SIDE / max(info.width, info.height)
        size = (int(info.width * k) // 2 * 2, int(info.height * k) // 2 * 2)
    out = []
    with FaceMeshDetector(video=True, max_faces=1) as det:
        for i, frame in enumerate(stream_frames(info, size=size)):
            faces = det.detect(frame)
            if faces and i % step == 0:
                out.append(faces[0])
    return np.stack(out) if len(out) >= FRAMES_PER_VIDEO // 4 else None


def rigidity_weights(per_video: list[np.ndarray], mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    var = np.zeros(len(mean))
    for lm in per_video:
        r, t, s = umeyama(mean, lm, w)
        canon = canonical(lm, r, t, s)
        var += canon.var(0).sum(-1)
    var /= len(per_video)
    weights = 1.0 / (var + WEIGHT_FLOOR)
    return (weights / weights.sum()).astype(np.float32)


def level_pitch(mean: np.ndarray, shapes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Tilt the reference so that the median face of the data, people talking towards the camera,
    has pitch 0 (the geometric frame alone puts the forehead-chin line upright instead)."""
    r, _, _ = umeyama(mean, shapes, weights)
    pitch = float(np.median(euler_from_matrix(r)[:, 1]))
    return (mean @ matrix_from_euler(np.array([[0.0, pitch, 0.0]]))[0].T).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    videos = sorted(p for d in args.dirs for p in d.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    per_video = []
    for i, v in enumerate(videos):
        lm = video_landmarks(v)
        print(f"[{i + 1}/{len(videos)}] {v.name}: {0 if lm is None else len(lm)} frames", file=sys.stderr)
        if lm is not None:
            per_video.append(lm)
    mean = generalised_procrustes(np.concatenate(per_video))
    weights = np.full(len(mean), 1.0 / len(mean), np.float32)
    for _ in range(2):
        weights = rigidity_weights(per_video, mean, weights)
    mean = level_pitch(mean, np.concatenate(per_video), weights)
    args.output.mkdir(parents=True, exist_ok=True)
    np.savez(args.output / "face_reference.npz", mean=mean, weights=weights)
    print(f"{len(per_video)} videos, {sum(map(len, per_video))} frames -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
