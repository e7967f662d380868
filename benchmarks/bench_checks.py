"""What checking a motion file costs: reading a .pose of a long video with and without its array checks.

    python benchmarks/bench_checks.py [--minutes 10] [--repeat 3]

Writes a synthetic .pose of the given length at 25 fps (a turning face, every array a real .pose holds) to a
temporary folder, then times `numpy.load` of it alone, `motion.load_pose` (the same read plus the checks of
`motion.checked_motion`), and `checked_motion` on the motion in memory (what pose2vid's renderer checks again).
Prints one JSON object: median seconds of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from a2pcli.headpose import load_reference, matrix_from_euler
from a2pcli.motion import Motion, checked_motion, load_pose, save_pose

FPS = 25.0


def synthetic_motion(frames: int) -> Motion:
    ref = load_reference().mean.astype(np.float32)
    euler = np.zeros((frames, 3), np.float32)
    euler[:, 0] = 10 * np.sin(np.arange(frames) / 50)
    rotation = matrix_from_euler(euler).astype(np.float32)
    scale = np.full(frames, 60.0, np.float32)
    translation = np.tile(np.array([256.0, 256.0, 0.0], np.float32), (frames, 1))
    landmarks = (scale[:, None, None] * ref[None] @ rotation.transpose(0, 2, 1) + translation[:, None]).astype(np.float32)
    return Motion(fps=FPS, rotation=rotation, translation=translation, scale=scale, valid=np.ones(frames, bool),
                  filled=np.zeros(frames, bool), frame_size=(512, 512), landmarks=landmarks,
                  expression=np.zeros_like(landmarks), reference=ref)


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    frames = int(args.minutes * 60 * FPS)
    motion = synthetic_motion(frames)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.pose"
        save_pose(motion, path)

        def numpy_load():
            with np.load(path) as z:
                return {k: z[k] for k in z.files}

        row = {"frames": frames, "pose_mb": round(path.stat().st_size / 1e6, 1),
               "numpy_load_s": median_s(numpy_load, args.repeat),
               "load_pose_s": median_s(lambda: load_pose(path), args.repeat),
               "checked_motion_s": median_s(lambda: checked_motion(motion, "motion"), args.repeat)}
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
