"""One clip of the diffusion renderer: plain on one GPU, through torchrun with one process and with N.

The same clip under torchrun with one process (the cost of the torchrun path: its start-up, nothing split)
and with N processes, one GPU each, that split every denoising step between them (a2pcli.aniportrait.split). Full size with random weights (they time the same as the
released ones): 90 frames at 512x512, 25 steps, CFG 3.5, fp16.

    python benchmarks/bench_split.py [--procs 1 N] [--split auto] [--frames 90] [--steps 25] [--size 512]
                                     [--dtype fp16] [--warm-steps 2] [--pose FILE.pose] [--out FILE.json]
    python benchmarks/bench_split.py --tiny --device cpu --size 64 --frames 20 --steps 2 --procs 1 2  # harness check

Each run is its own command, as a user starts it: `python benchmarks/bench_split.py --child ...` and
`python -m torch.distributed.run --standalone --nproc-per-node P benchmarks/bench_split.py --child ...` (P from
--procs; default 1 and the number of GPUs; a GPU cannot take two processes: NCCL refuses). In each, every process
builds the networks on its GPU, a warm-up render of --warm-steps steps pays the first kernels, then one timed
render: rank 0 sends the clip to the others (a2pcli.aniportrait.render.send_clip), samples its share, decodes
and converts to 8-bit frames; the others take their share (render_share). Reported per run: the command's wall
time (interpreter, imports, network build, warm-up included), the timed render (sampling; decode and 8-bit
conversion), the split chosen, peak VRAM of rank 0, the speed-up of the render against the plain run, and how
far its frames are from the plain run's (PSNR, largest difference in 8-bit levels). Prints one JSON object.

Needs what bench_aniportrait.py needs: torch, numpy, diffusers, transformers and the a2p package (whose
landmark drawing uses OpenCV; Pillow reads the reference image); no mediapipe, no ffmpeg: the landmarks come
from a .pose file (--pose, or liveportrait_d3's where bench_aniportrait.py finds it).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's a2p
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(args) -> None:
    """One process of a run (plain, or one of torchrun's): build, warm up, render once; rank 0 writes its
    figures (JSON) and frames (.npy) into --result."""
    import torch
    from PIL import Image

    from a2pcli.aniportrait.render import DiffusionOptions, LandmarkImages, render_share, sampler_config, send_clip
    from a2pcli.aniportrait.render import torch_dtype
    from a2pcli.aniportrait.sampler import Pose2VideoSampler, video_to_frames
    from a2pcli.aniportrait.split import join_clip_group
    from a2pcli.aniportrait.vae import decode_latents
    from a2pcli.launch import launch_from_env
    from bench_aniportrait import build, build_tiny, pose_landmarks

    launch = launch_from_env()
    group = join_clip_group(launch, args.device) if launch.distributed else None
    device = group.device if group is not None else args.device
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    models = build_tiny(device, torch_dtype(args.dtype)) if args.tiny else build(device, torch_dtype(args.dtype))
    sync()
    build_s = time.perf_counter() - t0
    ref = np.asarray(Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB"))
    landmarks, src = pose_landmarks(args.frames, args.pose)
    landmarks = np.ascontiguousarray(landmarks[:, :468, :2])
    dopts = DiffusionOptions(steps=args.steps, cfg=args.cfg, size=args.size, dtype=args.dtype, split=args.split)
    settings = {"weights": None, "dtype": args.dtype, "device": device, "compile": False, "split": args.split}
    figures = {}
    for name, steps in (("warm", args.warm_steps), ("timed", args.steps)):
        if steps < 1:
            continue
        config = sampler_config(dopts, args.size, args.size, args.dtype).replace(steps=steps)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t1 = time.perf_counter()
        if group is not None and not launch.is_main:
            header, arrays = group.receive_clip()
            render_share(models, header, arrays, group.share(header["mode"]))
            continue
        share = send_clip(group, config, ref, landmarks, src, settings) if group is not None else None
        poses = LandmarkImages(landmarks, src, (args.size, args.size))
        result = Pose2VideoSampler(models, config)(ref, poses, decode=False, share=share)
        if group is not None:
            group.clip_done()
        sync()
        t2 = time.perf_counter()
        frames = np.stack(video_to_frames(decode_latents(models.vae, result.latents, batch=config.vae_decode_batch)))
        sync()
        t3 = time.perf_counter()
        figures[name] = {"render_s": round(t3 - t1, 2), "sample_s": round(t2 - t1, 2),
                         "decode_and_8bit_s": round(t3 - t2, 2), "windows": len(result.windows),
                         "split": None if share is None else share.mode}
        if cuda:
            figures[name]["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if group is not None and launch.is_main:
        group.close()
    elif group is not None:
        assert group.receive_clip() is None
    if launch.is_main:
        np.save(args.result.with_suffix(".npy"), frames)
        args.result.write_text(json.dumps({"build_s": round(build_s, 2), **figures}))


def run(procs: int, args, folder: Path) -> tuple[dict, np.ndarray]:
    """One command (plain when procs is 0, else torchrun with `procs` processes) -> its figures and frames."""
    result = folder / f"run{procs}.json"
    own = [str(Path(__file__).resolve()), "--child", "--result", str(result), "--frames", str(args.frames),
           "--steps", str(args.steps), "--cfg", str(args.cfg), "--size", str(args.size), "--dtype", args.dtype,
           "--device", args.device, "--split", args.split, "--warm-steps", str(args.warm_steps)]
    own += ["--tiny"] if args.tiny else []
    own += ["--pose", str(args.pose)] if args.pose else []
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)] if procs else []
    threads = max(1, (os.cpu_count() or 1) // max(1, procs))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *launcher, *own], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(launcher + own)}\n{proc.stderr[-4000:]}")
    out = {"command_wall_s": round(wall, 2), **json.loads(result.read_text())}
    return out, np.load(result.with_suffix(".npy"))


def distance(frames: np.ndarray, plain: np.ndarray) -> dict:
    d = frames.astype(np.float64) - plain.astype(np.float64)
    mse = float(np.mean(d * d))
    return {"psnr_db": round(10 * np.log10(255.0 ** 2 / mse), 2) if mse > 0 else None,
            "max_abs_levels": int(np.abs(d).max()), "values_differing": round(float(np.mean(d != 0)), 6)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", help="torchrun runs with these process counts (default: 1 and "
                                                         "the number of GPUs)")
    ap.add_argument("--split", default="auto", choices=["auto", "windows", "cfg"])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the fixtures' tiny networks (checks this script on a CPU)")
    ap.add_argument("--warm-steps", type=int, default=2, help="steps of the warm-up render (0: none)")
    ap.add_argument("--pose", type=Path)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    import torch

    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    procs = args.procs or sorted({1, max(1, gpus)})
    report = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)]},
              "date": time.strftime("%Y-%m-%d"), "frames": args.frames, "steps": args.steps, "size": args.size,
              "dtype": args.dtype, "cfg": args.cfg, "split": args.split, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_frames = run(0, args, Path(tmp))
        report["runs"]["plain"] = plain
        for p in procs:
            figures, frames = run(p, args, Path(tmp))
            figures["render_speedup"] = round(plain["timed"]["render_s"] / figures["timed"]["render_s"], 2)
            figures["vs_plain"] = distance(frames, plain_frames)
            report["runs"][f"torchrun_{p}"] = figures
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
