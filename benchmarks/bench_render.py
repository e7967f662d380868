"""Embedded renderer speed: `pose2vid` of 10 s at 512x512 (25 fps, 250 frames) end to end, and where
the time goes (start-up, face detection, set-up, rendering alone, encoding alone).

    python benchmarks/bench_render.py [--portrait IMG] [--driving VIDEO_OR_POSE] [--device cpu|cuda]
                                      [--batch N] [--frames 250] [--size 512] [--skip-cli] [--mouth-model DIR]

Defaults: ../shared/media/sadtalker_happy.png driven by ../shared/media/liveportrait_d3.mp4.
Prints one JSON object; figures go to benchmarks/README.md with machine and date.
On a GPU, `--device cuda --skip-cli --frames 1000` measures batched rendering alone (frames/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--portrait", type=Path, default=SHARED / "media" / "sadtalker_happy.png")
    ap.add_argument("--driving", type=Path, default=SHARED / "media" / "liveportrait_d3.mp4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=0, help="frames per batch (0: what --batch-size auto picks)")
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--mouth-model", default=None, help="mouth model folder (default: the shipped one)")
    ap.add_argument("--no-mouth", action="store_true", help="render the warp alone (no mouth model)")
    ap.add_argument("--save-bundle", type=Path, help="write the framed portrait, its landmarks and the first "
                    "rendered frames (CPU reference) to this .npz, for a machine without mediapipe")
    ap.add_argument("--bundle", type=Path, help="read the portrait from such a .npz instead of detecting its face; "
                    "report the difference from its reference frames")
    args = ap.parse_args()

    import numpy as np
    import torch

    from a2pcli.encode import VideoWriter
    from a2pcli.headpose import load_reference
    from a2pcli.motion import save_pose
    from a2pcli.pipeline.portrait import Portrait, PortraitOptions, load_portrait
    from a2pcli.pipeline.reenact import driving_motion, motion_targets
    from a2pcli.pipeline.renderers import bytes_per_frame, plan_batch
    from a2pcli.render import WarpRenderer
    from a2pcli.retarget import FaceTargets

    res: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "torch": torch.__version__, "device": args.device, "frames": args.frames, "size": args.size}
    if args.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp())

    t = time.perf_counter()
    motion, _ = driving_motion(args.driving)
    res["driving_motion_s"] = round(time.perf_counter() - t, 3)
    # a motion of exactly --frames frames at --fps: loop the driving motion as needed
    reps = int(np.ceil(args.frames * motion.fps / args.fps / len(motion))) + 1
    t = time.perf_counter()
    import a2pcli.backdrop as backdrop

    segmented: list[np.ndarray] = []
    if args.bundle:
        from a2pcli.retarget import portrait_face

        with np.load(args.bundle) as z:
            bundle = {k: z[k] for k in z.files}
        portrait = Portrait(bundle["image"], portrait_face(bundle["landmarks"], load_reference()), args.portrait, 1)
        if "person" in bundle:  # the person segmentation made where mediapipe runs: the same still background
            person = bundle["person"]
            backdrop.segment_person = lambda image: person if image.shape[:2] == person.shape else None
    else:
        portrait = load_portrait(args.portrait, PortraitOptions(crop=True, size=args.size))
        if args.save_bundle:  # keep what the segmentation finds, for a machine without mediapipe
            found = backdrop.segment_person

            def keep(image: np.ndarray) -> np.ndarray | None:
                segmented.append(found(image))
                return segmented[-1]

            backdrop.segment_person = keep
    res["portrait_s"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    tgt = motion_targets(portrait, motion)
    tgt = FaceTargets(*(np.concatenate([getattr(tgt, k)] * reps) for k in ("landmarks", "rotation", "translation",
                                                                           "scale")))
    tgt = tgt.resample(args.frames, motion.fps, args.fps)
    batch = args.batch or plan_batch("auto", args.device, bytes_per_frame(portrait.image.shape[:2], portrait.face.scale))
    from a2pcli.mouthnet import load_model as load_mouth_model

    mouth = None if args.no_mouth else load_mouth_model(args.mouth_model, device=args.device)
    renderer = WarpRenderer(portrait.image, portrait.face, tgt, device=args.device, mouth=mouth)
    res["mouth_model"] = None if mouth is None else str(mouth.path)
    res["mouth_frames"] = int((renderer.mouth_strength(tgt) > 0.01).sum()) if mouth is not None else 0
    res["setup_s"] = round(time.perf_counter() - t, 3)
    res["batch"] = batch
    res["estimated_vram_gb"] = round(bytes_per_frame(portrait.image.shape[:2], portrait.face.scale) * batch / 1e9, 2)

    def render_all(sink=None) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for frames in renderer.render_batches(tgt, batch):
            if sink is not None:
                sink(frames)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = renderer.render(tgt.slice(0, 16))
    if args.save_bundle:
        person = {"person": segmented[0]} if segmented and segmented[0] is not None else {}
        np.savez_compressed(args.save_bundle, image=portrait.image, landmarks=portrait.face.landmarks, frames=first,
                            **person)
    if args.bundle:
        diff = np.abs(first.astype(np.int16) - bundle["frames"].astype(np.int16))
        mse = float((diff.astype(np.float64) ** 2).mean())
        res["vs_reference"] = {"max_abs": int(diff.max()), "mean_abs": round(float(diff.mean()), 4),
                               "psnr_db": round(10 * np.log10(255**2 / max(mse, 1e-12)), 2),
                               "share_of_pixels_off_by_more_than_2": round(float((diff > 2).mean()), 6)}
    res["renderer_notes"] = list(renderer.notes)  # e.g. no still background on a machine without mediapipe
    render_all()  # warm-up
    dt = render_all()
    res["render_only_fps"] = round(args.frames / dt, 1)
    if args.device.startswith("cuda"):
        res["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)

    frames = renderer.render(tgt.slice(0, min(batch, args.frames)))
    t = time.perf_counter()
    with VideoWriter(tmp / "enc.mp4", (frames.shape[2], frames.shape[1]), args.fps) as w:
        for i in range(args.frames):
            w.write(frames[i % len(frames)])
    res["encode_only_fps"] = round(args.frames / (time.perf_counter() - t), 1)

    t = time.perf_counter()
    with VideoWriter(tmp / "both.mp4", (frames.shape[2], frames.shape[1]), args.fps) as w:
        render_all(w.write_batch)
    res["render_and_encode_fps"] = round(args.frames / (time.perf_counter() - t), 1)

    if not args.skip_cli:
        pose = tmp / "drive.pose"
        save_pose(motion.slice(0, min(len(motion), int(round(args.frames * motion.fps / args.fps)))), pose)
        t = time.perf_counter()
        extra = ["--mouth-model", args.mouth_model] if args.mouth_model else []
        proc = subprocess.run([sys.executable, "-m", "a2pcli", "pose2vid", str(args.portrait), str(pose), "--crop", "--size",
                        str(args.size), "--fps", str(args.fps), "--device", args.device, "-o", str(tmp / "cli.mp4"),
                        "-q", "--json", *extra], check=True, capture_output=True, text=True)
        full = time.perf_counter() - t
        res["cli_frames"] = json.loads(proc.stdout)["outputs"][0]["frames"]
        res["cli_end_to_end_s"] = round(full, 2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
