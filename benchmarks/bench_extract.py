"""extract-pose speed: end to end (decode + landmarks + pose fit + write), and where the time goes.

    python benchmarks/bench_extract.py [VIDEO] [--repeat 3]

Default VIDEO: ../shared/media/liveportrait_d3.mp4 (512x512, 30 fps, 354 frames).
Prints one JSON object; figures go to benchmarks/README.md with machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "media" / "liveportrait_d3.mp4"


def time_decode(info) -> float:
    from a2pcli.media import stream_frames

    t = time.perf_counter()
    n = sum(1 for _ in stream_frames(info))
    return n / (time.perf_counter() - t)


def time_landmarks(info, limit: int = 300) -> float:
    from a2pcli.landmarks import FaceMeshDetector
    from a2pcli.media import stream_frames

    frames = [f.copy() for f, _ in zip(stream_frames(info), range(limit))]
    with FaceMeshDetector(video=True) as det:
        t = time.perf_counter()
        for f in frames:
            det.detect(f)
        return len(frames) / (time.perf_counter() - t)


def time_end_to_end(video: Path) -> tuple[float, int]:
    from a2pcli.extract import extract_motion
    from a2pcli.motion import save_pose

    t = time.perf_counter()
    motion, _ = extract_motion(video)
    with tempfile.TemporaryDirectory() as d:
        save_pose(motion, Path(d) / "x.pose")
    return time.perf_counter() - t, len(motion)


def time_cli(video: Path) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "a2pcli", "extract-pose", str(video), "-o", f"{d}/x.pose", "-q"],
                       check=True)
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from a2pcli.media import probe_video

    info = probe_video(args.video)
    runs = [time_end_to_end(args.video) for _ in range(args.repeat)]
    secs = statistics.median(r[0] for r in runs)
    n = runs[0][1]
    cli = time_cli(args.video)
    out = {
        "video": args.video.name,
        "size": [info.width, info.height],
        "frames": n,
        "end_to_end_fps": round(n / secs, 1),
        "end_to_end_s": round(secs, 2),
        "cli_wall_s_with_startup": round(cli, 2),
        "decode_only_fps": round(time_decode(info), 1),
        "landmarks_only_fps": round(time_landmarks(info), 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
