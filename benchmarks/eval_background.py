"""A background that stays put: `a2p vid2vid --region pose` with a driving video whose head turns (about
+-20 degrees of yaw, and moves), then, in every output frame, the PSNR of the background pixels against the
portrait.

Background pixels: MediaPipe's selfie segmentation (run here, independently of the renderer's own use of
it) says "not a person" in the portrait AND in that output frame, at least `--margin` face units from the
person's outline in both: what was background and still is must not have changed; what the moving head
covers or uncovers is left out (look at it on the contact sheets). Two regions are scored: the background
inside the working region (`near`: within ROI_HALF face units of the face centre, where the renderer acts)
and all of it (`all`). Also reported, `portrait_only`: the portrait's background alone, at 0.15 and 0.5 face
units from its outline; the head's own motion (d3 moves it up to 0.44 face units) covers some of it, so
this one falls with the head's travel whatever the renderer does. An unmoved background re-encoded scores
about 40 dB.

    python benchmarks/eval_background.py [PORTRAIT ...] [--driving VIDEO_OR_POSE] [--max-size 512]
                                         [--margin 0.2] [--out DIR]

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's a2p, also for the commands (run in ROOT)
SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA, PORTRAITS = SHARED / "media", SHARED / "corpus" / "portraits"
# a photo, two paintings, a cartoon and a full-body picture (plus a photo in front of a textured background)
DEFAULT_PORTRAITS = (MEDIA / "sadtalker_happy.png", MEDIA / "liveportrait_s9.jpg", PORTRAITS / "KwaiVGI__LivePortrait__s4.jpg",
                     PORTRAITS / "KwaiVGI__LivePortrait__s7.jpg", MEDIA / "sadtalker_full_body_1.png",
                     PORTRAITS / "Hanbo-Cheng__DAWN-pytorch__real_male1.jpeg")
MARGIN = 0.2  # face units between the person's outline (in the portrait and in the frame) and the pixels scored:
# the renderer's segmentation and this one disagree on thin fringes (lace, stray hair) within about this
PORTRAIT_ONLY_MARGINS = (0.15, 0.5)
BAR_WORST, BAR_MEAN = 35.0, 37.0  # dB
PSNR_CAP = 100.0


class Segmenter:
    """MediaPipe's selfie segmentation (general model) of whole pictures: (H, W) bool person masks."""

    def __init__(self):
        from mediapipe.python.solutions import selfie_segmentation

        self.seg = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def person(self, image: np.ndarray) -> np.ndarray:
        return self.seg.process(np.ascontiguousarray(image)).segmentation_mask >= 0.5


def clear_of(person: np.ndarray, margin_px: float) -> np.ndarray:
    """(H, W) bool: farther than margin_px from every person pixel."""
    import cv2

    return cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 5) > margin_px


def working_region_mask(shape: tuple[int, int], face) -> np.ndarray:
    from a2pcli.render import ROI_HALF

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = face.translation[:2]
    return (np.abs(xx - cx) <= ROI_HALF * face.scale) & (np.abs(yy - cy) <= ROI_HALF * face.scale)


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
                   check=True, cwd=ROOT)
    return time.perf_counter() - t


def reencoded(image: np.ndarray, tmp: Path, frames: int = 10) -> list[np.ndarray]:
    """The portrait, unmoved, through a2p's own encoder (H.264 yuv420p, crf 18) and back: what encoding alone
    costs. A fine texture or saturated lights on black cost it several dB."""
    from a2pcli.encode import VideoWriter

    path = tmp / "still.mp4"
    with VideoWriter(path, image.shape[1::-1], 25.0) as w:
        for _ in range(frames):
            w.write(image)
    return read_video(path)


def score(portrait: Path, video: Path, max_size: int, margin: float = MARGIN) -> dict:
    """Per-frame background PSNR of `video` (rendered from `portrait` at --max-size `max_size`)."""
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait

    p = load_portrait(portrait, PortraitOptions(max_size=max_size))
    seg = Segmenter()
    still = clear_of(seg.person(p.image), margin * p.face.scale)
    near = working_region_mask(p.image.shape[:2], p.face)
    frames = read_video(video)
    fixed = {f"portrait_only_{m}": clear_of(seg.person(p.image), m * p.face.scale) for m in PORTRAIT_ONLY_MARGINS}
    curves: dict[str, list] = {"near": [], "all": [], **{k: [] for k in fixed}}
    pixels: dict[str, list] = {k: [] for k in curves}
    for f in frames:
        both = still & clear_of(seg.person(f), margin * p.face.scale)
        for k, m in (("near", both & near), ("all", both), *fixed.items()):
            curves[k].append(masked_psnr(f, p.image, m))
            pixels[k].append(int(m.sum()))
    with tempfile.TemporaryDirectory(prefix="a2p-bg-still-") as td:
        enc = reencoded(p.image, Path(td))
    res = {"portrait": portrait.name, "size": list(p.image.shape[1::-1]), "frames": len(frames),
           "reencoded_db": {"near": round(float(np.mean([masked_psnr(f, p.image, still & near) for f in enc])), 2),
                            "all": round(float(np.mean([masked_psnr(f, p.image, still) for f in enc])), 2)}}
    for k, c in curves.items():
        c = np.array(c)
        res[k] = {"min_pixels": int(min(pixels[k])), "worst_db": round(float(c.min()), 2),
                  "mean_db": round(float(c.mean()), 2), "worst_frame": int(c.argmin()),
                  "passes": bool(c.min() >= BAR_WORST and c.mean() >= BAR_MEAN)}
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
                            "--progress", "none", "--quiet"], check=True, cwd=ROOT)
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
