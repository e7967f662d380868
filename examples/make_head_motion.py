"""Writes examples/head_motion.npy: a 4-second synthetic head motion (a nod, a turn, a tilt) in
AniPortrait's head-pose template layout (T x 6: Euler angles in degrees, then translation in cm,
30 fps), so that `a2p pose2vid` has a motion to replay with nothing downloaded.

    python examples/make_head_motion.py
"""

from pathlib import Path

import numpy as np

FPS, SECONDS = 30, 4.0


def main() -> None:
    t = np.arange(int(FPS * SECONDS)) / FPS
    ease = np.sin(np.pi * t / SECONDS) ** 2  # starts and ends at rest
    pose = np.zeros((len(t), 6), np.float32)
    pose[:, 0] = 6.0 * np.sin(2 * np.pi * 0.75 * t) * ease  # pitch: nods
    pose[:, 1] = 14.0 * np.sin(2 * np.pi * 0.25 * t) * ease  # yaw: a slow turn left and right
    pose[:, 2] = 4.0 * np.sin(2 * np.pi * 0.5 * t + 0.5) * ease  # roll: a tilt
    pose[:, 3] = 0.4 * np.sin(2 * np.pi * 0.25 * t) * ease  # a little sway, cm
    np.save(Path(__file__).with_name("head_motion.npy"), pose)


if __name__ == "__main__":
    main()
