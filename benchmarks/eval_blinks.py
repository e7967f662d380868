"""Blinks that close, at times that depend on the inputs: `a2p audio2video` (default seed) renders each
(portrait, speech) pair; MediaPipe reads the output; at each blink the eye openness (lid distance over eye
width, both eyes averaged) at its deepest, as a fraction of the clip's median openness. Measured the same
way, real blinks in talking clips reach 0.23-0.43 (MediaPipe's lid points never quite meet).

The blink times are the ones a2p scheduled (talk.blink_schedule on the same inputs); the deepest point is
looked for within a frame of each. Pairs that share a portrait are also compared: different speech must
blink at different times. With `--driving X.pose`, each portrait is also driven by `a2p vid2vid`: at each of
the driver's full blinks (its openness under 0.45 of its median) the output's depth, against the openness of
the output's first frame (the portrait itself: the eyes follow the driver's change since its first frame).

    python benchmarks/eval_blinks.py [PORTRAIT SPEECH ...] [--seconds 10] [--driving X.pose] [--out DIR]
    python benchmarks/eval_blinks.py --still ../shared/corpus/portraits     # the renderer alone, many portraits

Bar: every blink at most 0.45. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's a2p, also for the commands (run in ROOT)
SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA, PORTRAITS = SHARED / "media", SHARED / "corpus" / "portraits"
EN, ZH, JA = MEDIA / "sadtalker_RD_Radio31_000.wav", MEDIA / "sadtalker_chinese_poem1.wav", MEDIA / "sadtalker_japanese.wav"
# a photo, a painting, a cartoon and a full-body picture; the photo with two speech files
DEFAULT_PAIRS = ((MEDIA / "sadtalker_happy.png", EN), (MEDIA / "sadtalker_happy.png", ZH), (MEDIA / "liveportrait_s9.jpg", JA),
                 (PORTRAITS / "KwaiVGI__LivePortrait__s7.jpg", EN), (MEDIA / "sadtalker_full_body_1.png", ZH))
FPS, MAX_SIZE, SEED = 25.0, 512, 0
BAR = 0.45
PEAK_WINDOW = 1  # frames either side of a scheduled peak
DRIVER_BLINK = 0.45  # a driver's full blink: openness under this fraction of its median


def eye_openness(lm: np.ndarray) -> np.ndarray:
    """Lid distance over eye width, both eyes averaged. lm: (..., 478, 2+) -> (...)"""
    from a2pcli import facemesh as fm

    out = []
    for upper, lower in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)):
        gap = np.linalg.norm(lm[..., upper[1:-1], :2] - lm[..., lower[1:-1], :2], axis=-1).mean(-1)
        width = np.linalg.norm(lm[..., upper[0], :2] - lm[..., upper[-1], :2], axis=-1)
        out.append(gap / np.maximum(width, 1e-6))
    return np.mean(out, 0)


def landmark_series(frames) -> list:
    """MediaPipe's face mesh on every frame (video mode): (478, 3) pixels, or None where no face is found."""
    from a2pcli.landmarks import FaceMeshDetector

    with FaceMeshDetector(video=True) as det:
        return [(f[0] if f else None) for f in (det.detect(frame) for frame in frames)]


def openness_series(frames=None, landmarks: list | None = None) -> np.ndarray:
    """Eye openness of every frame (NaN where no face), from `frames` or their `landmarks` (landmark_series)."""
    lms = landmark_series(frames) if landmarks is None else landmarks
    return np.array([eye_openness(lm) if lm is not None else np.nan for lm in lms], np.float64)


def blink_depths(openness: np.ndarray, peaks: np.ndarray, window: int = PEAK_WINDOW) -> np.ndarray:
    """The openness at each scheduled peak's deepest frame (within `window`), over the clip's median."""
    med = float(np.nanmedian(openness))
    out = []
    for p in peaks:
        seg = openness[max(0, p - window) : p + window + 1]
        out.append(float(np.nanmin(seg)) / med if np.isfinite(seg).any() else np.nan)
    return np.array(out)


def scheduled_peaks(portrait: Path, speech: Path, seconds: float) -> tuple[np.ndarray, int]:
    """The blink peaks (frames) `a2p audio2video --max-size 512 --seed 0` schedules for this pair."""
    from a2pcli.audio import SAMPLE_RATE, load_audio
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.talk import TalkOptions, blink_schedule

    audio = load_audio(speech, SAMPLE_RATE, duration_s=seconds)
    n = max(1, int(round(len(audio) / SAMPLE_RATE * FPS)))
    image = load_portrait(portrait, PortraitOptions(max_size=MAX_SIZE)).image
    return blink_schedule(audio, FPS, n, TalkOptions(seed=SEED), image), n


def render(portrait: Path, speech: Path, seconds: float, tmp: Path, out: Path) -> None:
    """`a2p audio2video` of the first `seconds` of `speech` (cut into tmp/<stem>.wav) into `out`."""
    from a2pcli.audio import SAMPLE_RATE, load_audio, write_wav

    cut = tmp / f"{speech.stem}.wav"
    write_wav(cut, load_audio(speech, SAMPLE_RATE, duration_s=seconds), SAMPLE_RATE)
    subprocess.run([sys.executable, "-m", "a2pcli", "audio2video", str(portrait), str(cut), "-o", str(out),
                    "--max-size", str(MAX_SIZE), "--seed", str(SEED), "--fps", str(FPS), "--progress", "none",
                    "--overwrite", "--quiet"], check=True, cwd=ROOT)


def read_video(path: Path) -> list[np.ndarray]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    w, h = next(gen)["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]


def evaluate(portrait: Path, speech: Path, seconds: float, tmp: Path, keep: Path) -> dict:
    video = keep / f"{portrait.stem}__{speech.stem}.mp4"
    render(portrait, speech, seconds, tmp, video)
    peaks, n = scheduled_peaks(portrait, tmp / f"{speech.stem}.wav", seconds)  # the cut the CLI read
    frames = read_video(video)
    openness = openness_series(frames)
    depths = blink_depths(openness, peaks)
    return {"portrait": portrait.name, "speech": speech.name, "frames": len(frames), "scheduled_frames": n,
            "blink_s": [round(p / FPS, 2) for p in peaks], "depth": [round(float(d), 3) for d in depths],
            "worst": round(float(np.nanmax(depths)), 3) if len(depths) else None,
            "passes": bool(len(depths) and np.nanmax(depths) <= BAR),
            "median_openness": round(float(np.nanmedian(openness)), 4), "video": str(video)}


def driver_blinks(openness: np.ndarray, below: float = DRIVER_BLINK) -> np.ndarray:
    """Frames of a driving video's full blinks: the deepest frame of each run of frames whose openness is under
    `below` times the clip's median."""
    r = openness / np.nanmedian(openness)
    shut = np.nan_to_num(r, nan=1.0) < below
    edges = np.flatnonzero(np.diff(np.concatenate([[0], shut.astype(np.int8), [0]])))
    return np.array([a + int(np.argmin(r[a:b])) for a, b in zip(edges[::2], edges[1::2])], np.int64)


def evaluate_driven(portrait: Path, driving: Path, keep: Path) -> dict:
    """`a2p vid2vid` of `portrait` with `driving` (a .pose): the output's blink depth at each of the driver's
    full blinks."""
    from a2pcli.motion import load_pose

    video = keep / f"{portrait.stem}__{driving.stem}.mp4"
    subprocess.run([sys.executable, "-m", "a2pcli", "vid2vid", str(portrait), str(driving), "-o", str(video),
                    "--max-size", str(MAX_SIZE), "--progress", "none", "--overwrite", "--quiet"], check=True, cwd=ROOT)
    motion = load_pose(driving)
    peaks = driver_blinks(eye_openness(motion.landmarks))
    openness = openness_series(read_video(video))
    # the output's eyes follow the driver's change since its first frame, where the output is the portrait:
    # depths are against the portrait's own openness (a driver that starts wide-eyed leaves the clip's median low)
    depths = blink_depths(openness, peaks) * np.nanmedian(openness) / openness[0]
    driver = eye_openness(motion.landmarks)[peaks] / np.nanmedian(eye_openness(motion.landmarks))
    return {"portrait": portrait.name, "driving": driving.name, "blink_s": [round(p / motion.fps, 2) for p in peaks],
            "driver_depth": [round(float(d), 3) for d in driver], "depth": [round(float(d), 3) for d in depths],
            "worst": round(float(np.nanmax(depths)), 3) if len(depths) else None,
            "passes": bool(len(depths) and np.nanmax(depths) <= BAR), "video": str(video)}


def still_blink(portrait: Path, fps: float = FPS) -> float:
    """The renderer alone: `portrait` (long side 512) with its head still and one blink at frame 25 of 32, in
    memory (no encoding). Its depth, against the open frames' median."""
    from a2pcli.headpose import apply_pose
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.pipeline.renderers import render_frames
    from a2pcli.retarget import FaceTargets
    from a2pcli.talk import blink_curve, blink_delta

    p = load_portrait(portrait, PortraitOptions(max_size=MAX_SIZE))
    f, n, peak = p.face, 32, 25
    canon = f.canon[None] + blink_delta(f.canon, blink_curve(n, fps, np.array([peak])))
    rot, trans = np.repeat(f.rotation[None], n, 0), np.repeat(f.translation[None], n, 0)
    scale = np.full(n, f.scale, np.float32)
    tgt = FaceTargets(apply_pose(canon.astype(np.float32), rot, trans, scale).astype(np.float32), rot, trans, scale)
    frames = np.concatenate(list(render_frames(p, tgt)))
    return float(blink_depths(openness_series(frames), np.array([peak]))[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="*", type=Path, help="PORTRAIT SPEECH pairs (default: a photo, a painting, "
                    "a cartoon and a full-body picture with English, Chinese and Japanese speech)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, help="keep the rendered videos here")
    ap.add_argument("--driving", type=Path, help="also `a2p vid2vid` each portrait with this .pose (a driving "
                    "video's, from `a2p extract-pose`): the output's depth at each of the driver's full blinks")
    ap.add_argument("--still", type=Path, help="instead: the renderer alone on every image in this folder, head "
                    "still, one blink each (still_blink)")
    args = ap.parse_args()
    if args.still:
        from a2pcli.errors import A2PError

        depths = {}
        for path in sorted(args.still.iterdir()):
            try:
                depths[path.name] = round(still_blink(path), 3)
            except A2PError as exc:
                depths[path.name] = f"skipped: {exc.one_line()}"
            print(json.dumps({path.name: depths[path.name]}), file=sys.stderr)
        values = np.array([v for v in depths.values() if isinstance(v, float)])
        print(json.dumps({"bar": BAR, "portraits": len(values), "worst": round(float(values.max()), 3),
                          "mean": round(float(values.mean()), 3), "over_bar": int((values > BAR).sum()),
                          "depths": depths}, indent=1))
        return 0
    if len(args.pairs) % 2:
        ap.error("give PORTRAIT SPEECH pairs")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2])) or list(DEFAULT_PAIRS)
    results = []
    with tempfile.TemporaryDirectory(prefix="a2p-blinks-") as td:
        keep = args.out or Path(td)
        keep.mkdir(parents=True, exist_ok=True)
        for portrait, speech in pairs:
            res = evaluate(portrait, speech, args.seconds, Path(td), keep)
            results.append(res)
            print(json.dumps(res), file=sys.stderr)
        driven = []
        if args.driving:
            for portrait in dict.fromkeys(p for p, _ in pairs):
                driven.append(evaluate_driven(portrait, args.driving, keep))
                print(json.dumps(driven[-1]), file=sys.stderr)
    by_portrait: dict[str, list] = {}
    for r in results:
        by_portrait.setdefault(r["portrait"], []).append(r["blink_s"])
    same_times = {k: v for k, v in by_portrait.items() if len(v) > 1 and any(a == b for i, a in enumerate(v) for b in v[i + 1 :])}
    depths = [d for r in results for d in r["depth"]]
    summary = {"seconds": args.seconds, "bar": BAR, "blinks": len(depths),
               "worst": round(float(np.nanmax(depths)), 3) if depths else None,
               "mean": round(float(np.nanmean(depths)), 3) if depths else None,
               "all_pass": all(r["passes"] for r in results),
               "same_times_for_different_speech": same_times, "pairs": results, "driven": driven}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
