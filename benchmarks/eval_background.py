"""A background that stays put: `a2p vid2vid --region pose` with a driving video whose head turns (about
+-20 degrees of yaw), then, in every output frame, the PSNR of the portrait's background pixels against
the portrait itself.

Background pixels: MediaPipe's selfie segmentation of the whole portrait (run here, independently of the
renderer's own use of it) says "not a person" (< 0.5), and they lie farther than `--margin` face units
from the person's outline (the head may turn over pixels right beside it). Two sets are scored: the
background inside the working region (`near`: within ROI_HALF face units of the face centre, where the
renderer acts) and all of it (`all`, what a viewer sees). An unmoved background re-encoded scores
about 40 dB.

    python benchmarks/eval_background.py [PORTRAIT ...] [--driving VIDEO_OR_POSE] [--max-size 512]
                                         [--margin 0.15] [--out DIR]

Bars: at least 35 dB in every frame and 37 dB on average. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA, PORTRAITS = SHARED / "media", SHARED / "corpus" / "portraits"
# a photo, two paintings, a cartoon and a full-body picture (plus a photo in front of a textured background)
DEFAULT_PORTRAITS = (MEDIA / "sadtalker_happy.png", MEDIA / "liveportrait_s9.jpg", PORTRAITS / "KwaiVGI__LivePortrait__s4.jpg",
                     PORTRAITS / "KwaiVGI__LivePortrait__s7.jpg", MEDIA / "sadtalker_full_body_1.png",
                     PORTRAITS / "Hanbo-Cheng__DAWN-pytorch__real_male1.jpeg")
MARGIN = 0.15  # face units between the person's outline and the pixels scored
BAR_WORST, BAR_MEAN = 35.0, 37.0  # dB
PSNR_CAP = 100.0


def person_probability(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 0..1: MediaPipe's selfie segmentation (general model) of the whole picture."""
    from mediapipe.python.solutions import selfie_segmentation

    with selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        return seg.process(np.ascontiguousarray(image)).segmentation_mask.astype(np.float32)


def background_masks(image: np.ndarray, face, margin: float = MARGIN) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks of the background pixels scored: `all`, and `near` (the working region)."""
    import cv2

    from a2pcli.render import ROI_HALF

    person = (person_probability(image) >= 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(1 - person, cv2.DIST_L2, 5)  # pixels to the nearest person pixel
    bg = dist > margin * face.scale
    h, w = person.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = face.translation[:2]
    near = (np.abs(xx - cx) <= ROI_HALF * face.scale) & (np.abs(yy - cy) <= ROI_HALF * face.scale)
    return {"all": bg, "near": bg & near}


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    mse = float(np.mean(d * d)) if d.size else 0.0
    return PSNR_CAP if mse <= 0 else float(min(PSNR_CAP, 10 * np.log10(255.0**2 / mse)))


def read_video(path: Path) -> list[np.ndarray]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]


def render(portrait: Path, driving: Path, out: Path, max_size: int, region: str = "pose") -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "a2pcli", "vid2vid", str(portrait), str(driving), "-o", str(out),
                    "--region", region, "--max-size", str(max_size), "--progress", "none", "--overwrite", "--quiet"],
                   check=True)
    return time.perf_counter() - t


def score(portrait: Path, video: Path, max_size: int, margin: float = MARGIN) -> dict:
    """Per-frame background PSNR of `video` (rendered from `portrait` at --max-size `max_size`)."""
    from a2pcli.animate import PortraitOptions, load_portrait

    p = load_portrait(portrait, PortraitOptions(max_size=max_size))
    masks = background_masks(p.image, p.face, margin)
    frames = read_video(video)
    res = {"portrait": portrait.name, "size": list(p.image.shape[1::-1]), "frames": len(frames)}
    for k, m in masks.items():
        curve = np.array([masked_psnr(f, p.image, m) for f in frames])
        res[k] = {"pixels": int(m.sum()), "worst_db": round(float(curve.min()), 2),
                  "mean_db": round(float(curve.mean()), 2), "worst_frame": int(curve.argmin()),
                  "passes": bool(curve.min() >= BAR_WORST and curve.mean() >= BAR_MEAN)}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("portraits", nargs="*", type=Path, default=list(DEFAULT_PORTRAITS))
    ap.add_argument("--driving", type=Path, default=MEDIA / "liveportrait_d3.mp4",
                    help="a driving video (or its .pose) whose head turns")
    ap.add_argument("--max-size", type=int, default=512)
    ap.add_argument("--margin", type=float, default=MARGIN, help="face units kept clear of the person's outline")
    ap.add_argument("--out", type=Path, help="keep the rendered videos here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="a2p-bg-") as td:
        keep = args.out or Path(td)
        keep.mkdir(parents=True, exist_ok=True)
        driving = args.driving
        if driving.suffix != ".pose":  # extract once for every portrait
            driving = Path(td) / "driving.pose"
            subprocess.run([sys.executable, "-m", "a2pcli", "extract-pose", str(args.driving), "-o", str(driving),
                            "--progress", "none", "--quiet"], check=True)
        for portrait in args.portraits:
            video = keep / f"{portrait.stem}_turn.mp4"
            seconds = render(portrait, driving, video, args.max_size)
            res = score(portrait, video, args.max_size, args.margin)
            res["render_s"] = round(seconds, 2)
            results.append(res)
            print(json.dumps(res), file=sys.stderr)
    summary = {"driving": args.driving.name, "max_size": args.max_size, "margin_face_units": args.margin,
               "bars_db": {"worst": BAR_WORST, "mean": BAR_MEAN}, "portraits": results,
               "all_pass": all(r["near"]["passes"] and r["all"]["passes"] for r in results)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
