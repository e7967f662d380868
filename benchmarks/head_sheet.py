"""Head-motion contact sheets: the same portrait and speech rendered with two seeds, with --still and with the
hand-made rule (`--head rule`), one row each, to look at as a user would.

Each row: frames every `--step` seconds, all cut from the same fixed box (the face in the first frame, with
room around it), so the head's turns, nods and tilts show against the frame; under the rows, the head pose
MediaPipe reads from each rendered video (`a2p extract-pose`: yaw red, pitch green, roll blue, degrees from the
portrait's own pose) and the speech loudness (grey).

    python benchmarks/head_sheet.py PORTRAIT SPEECH [PORTRAIT SPEECH ...] [--seconds 6] [--seeds 0 1] [--out sheets]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TILE = 150
PLOT_H = 170
RANGE_DEG = 15.0  # the plot's vertical range, +- degrees


def render(portrait: Path, speech: Path, seconds: float, extra: list[str], tmp: Path, name: str) -> Path:
    import soundfile as sf

    from a2pcli.audio import load_audio

    cut = tmp / f"{speech.stem}.wav"
    if not cut.exists():
        sf.write(cut, load_audio(speech, 16000, duration_s=seconds), 16000)
    out = tmp / f"{name}.mp4"
    subprocess.run([sys.executable, "-m", "a2pcli", "audio2video", str(portrait), str(cut), "-o", str(out),
                    "--max-size", "512", "--progress", "none", "--overwrite", "-q", *extra], check=True)
    return out


def read_frames(video: Path) -> tuple[list[np.ndarray], float]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(video))
    meta = next(gen)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen], float(meta["fps"])


def face_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    from a2pcli.landmarks import detect_image

    lm = detect_image(frame)[0]
    h, w = frame.shape[:2]
    (x0, y0), (x1, y1) = lm[:, :2].min(0), lm[:, :2].max(0)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.6
    return (int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0)), int(min(cx + side / 2, w)),
            int(min(cy + side / 2, h)))


def row(frames: list[np.ndarray], fps: float, box, times: np.ndarray, label: str) -> np.ndarray:
    import cv2

    tiles = []
    for t in times:
        f = frames[min(int(round(t * fps)), len(frames) - 1)][box[1]:box[3], box[0]:box[2]]
        f = cv2.resize(np.ascontiguousarray(f), (TILE, TILE), interpolation=cv2.INTER_AREA)
        cv2.line(f, (TILE // 2, 0), (TILE // 2, TILE), (255, 255, 255), 1)  # fixed references: the motion shows
        cv2.line(f, (0, TILE // 2), (TILE, TILE // 2), (255, 255, 255), 1)
        cv2.putText(f, f"{t:.1f}s", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(f)
    out = np.concatenate(tiles, axis=1)
    cv2.putText(out, label, (4, TILE - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 60, 60), 1, cv2.LINE_AA)
    return out


def plot(poses: dict[str, np.ndarray], fps: float, speech: Path, seconds: float, width: int) -> np.ndarray:
    """One strip per variant: yaw, pitch, roll (red, green, blue) relative to the first frame, and loudness."""
    import cv2

    from a2pcli.audio import load_audio

    audio = load_audio(speech, 16000, duration_s=seconds)
    hop = 160
    n = len(audio) // hop
    db = 20 * np.log10(np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12))
    strips = []
    for label, euler in poses.items():
        img = np.full((PLOT_H, width, 3), 255, np.uint8)
        mid = PLOT_H // 2

        def line(values, t, lo, hi, colour):
            ok = np.isfinite(values)
            xs = (t[ok] / seconds * (width - 1)).astype(np.int32)
            ys = (PLOT_H - 4 - (np.clip(values[ok], lo, hi) - lo) / (hi - lo) * (PLOT_H - 8)).astype(np.int32)
            cv2.polylines(img, [np.stack([xs, ys], 1)], False, colour, 1, cv2.LINE_AA)

        line(db, np.arange(n) * hop / 16000, -60.0, 0.0, (190, 190, 190))
        cv2.line(img, (0, mid), (width, mid), (225, 225, 225), 1)
        rel = euler - euler[:1]
        t = np.arange(len(rel)) / fps
        for axis, colour in enumerate(((220, 30, 30), (30, 160, 30), (30, 60, 220))):
            line(rel[:, axis], t, -RANGE_DEG, RANGE_DEG, colour)
        std = " / ".join(f"{v:.1f}" for v in euler.std(0))
        cv2.putText(img, f"{label}: yaw red, pitch green, roll blue (+-{RANGE_DEG:g} deg; std {std}); grey loudness",
                    (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        strips.append(img)
    return np.concatenate(strips, axis=0)


def sheet(portrait: Path, speech: Path, args, tmp: Path) -> np.ndarray:
    from a2pcli.extract import ExtractOptions, extract_motion

    variants = [(f"--seed {s}", ["--seed", str(s)]) for s in args.seeds]
    variants += [("--still", ["--still"]), ("--head rule", ["--head", "rule"])]
    rows, poses, box, fps = [], {}, None, 25.0
    for i, (label, extra) in enumerate(variants):
        video = render(portrait, speech, args.seconds, extra, tmp, f"v{i}")
        frames, fps = read_frames(video)
        box = box or face_box(frames[0])
        times = np.arange(0.0, min(args.seconds, len(frames) / fps) - 1e-6, args.step)
        rows.append(row(frames, fps, box, times, label))
        motion, _ = extract_motion(video, ExtractOptions())
        poses[label] = motion.euler
    width = rows[0].shape[1]
    return np.concatenate(rows + [plot(poses, fps, speech, args.seconds, width)], axis=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", type=Path, help="PORTRAIT SPEECH pairs")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--step", type=float, default=0.5, help="seconds between frames on the sheet")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("sheets"))
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give PORTRAIT SPEECH pairs")
    import cv2

    args.out.mkdir(parents=True, exist_ok=True)
    for portrait, speech in zip(args.pairs[::2], args.pairs[1::2]):
        with tempfile.TemporaryDirectory() as td:
            img = sheet(portrait, speech, args, Path(td))
        dest = args.out / f"head__{portrait.stem}__{speech.stem}.png"
        cv2.imwrite(str(dest), img[..., ::-1])
        print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
