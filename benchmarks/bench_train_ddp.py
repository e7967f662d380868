"""Training through torchrun: time per epoch of `a2p train audio2motion` run plainly, through torchrun with one
process (the single-GPU path: its overhead against the plain run), and with N processes when N GPUs exist.

    python benchmarks/bench_train_ddp.py [--device cuda] [--preset default] [--epochs 3] [--procs 2 4 8]
    python benchmarks/bench_train_ddp.py --data clips/ --cache prepared-cache/      # your own prepared data

Data: by default synthetic clips (a2pcli.train.synthetic: stand-in files plus their prepared landmarks and
log-mel of the real shapes, a babbling voice opening the jaw) written into a fresh cache in a temporary folder,
so this needs only torch, numpy and the a2p package with its light dependencies (typer, rich, safetensors,
filelock, platformdirs): no MediaPipe, ffmpeg, librosa or OpenCV. The defaults make 300 clips of 20 s (about
0.6 GB in the temporary folder; 85 training speakers capped at 60 s each: 53 steps an epoch at batch 32).
With --data, the clips under it must already be prepared in the cache at --cache (A2P_CACHE_DIR: copy
<cache>/train-data/ along from the machine that prepared them; a clip missing from it would need MediaPipe).

Each run is one command in a fresh process (`python -m a2pcli train audio2motion ...` or
`python -m torch.distributed.run --standalone --nproc-per-node N -m a2pcli train audio2motion ...`) with its own
model folder. Reported per run: wall seconds of the whole command (start-up, data read, validation, export
included), the training seconds of each epoch from its train_log.jsonl (optimiser steps and batch making only;
the first epoch includes warm-up), the median of the later epochs, milliseconds per step, and the ratio to
the plain run. `--batch-size` is the global batch: N processes each compute batch / N of every step, so the
N-process runs do the same work per epoch in fewer seconds when they scale. Prints one JSON object.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's a2p, also for the commands (run in ROOT)


def run_training(launcher: list[str], data: Path, out: Path, args, env: dict) -> dict:
    """One training command -> its wall time and its epochs' training seconds."""
    cmd = [*launcher, "train", "audio2motion", "--data", str(data), "-o", str(out), "--preset", args.preset,
           "--epochs", str(args.epochs), "--device", args.device, "--seed", "0", "--progress", "none", "-q"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    epochs = [r["seconds"] for r in log]
    later = epochs[1:] or epochs
    steps = log[-1]["step"] // len(log)
    return {"wall_s": round(wall, 1), "epoch_s": epochs, "epoch_median_s": round(statistics.median(later), 2),
            "steps_per_epoch": steps, "ms_per_step": round(1000 * statistics.median(later) / max(steps, 1), 1),
            "final_train_loss": log[-1]["train_loss"]}


def synthetic(folder: Path, cache: Path, args) -> Path:
    """Synthetic clips under folder/clips, prepared into `cache` for the preset's clip length."""
    os.environ["A2P_CACHE_DIR"] = str(cache)
    from a2pcli.train.audio2motion import PRESETS
    from a2pcli.train.clips import data_cache_dir
    from a2pcli.train.synthetic import make_synthetic_data

    root = folder / "clips"
    make_synthetic_data(root, data_cache_dir(), speakers=args.speakers, clips_per_speaker=args.clips,
                        seconds=args.seconds, max_clip_s=(PRESETS[args.preset].max_clip_s,))
    return root


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (each process takes cuda:LOCAL_RANK) or cpu")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default: the preset's)")
    ap.add_argument("--procs", type=int, nargs="*", default=None,
                    help="process counts to run beside 1 (default: the number of GPUs, when more than one)")
    ap.add_argument("--data", type=Path, default=None, help="prepared clips (default: synthetic ones)")
    ap.add_argument("--cache", type=Path, default=None, help="the a2p cache holding --data's prepared clips")
    ap.add_argument("--speakers", type=int, default=100, help="synthetic speakers")
    ap.add_argument("--clips", type=int, default=3, help="synthetic clips per speaker")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each synthetic clip")
    ap.add_argument("--keep", type=Path, default=None, help="write the runs' model folders here")
    args = ap.parse_args()

    work = (args.keep or Path(tempfile.mkdtemp(prefix="bench-train-ddp-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        cache = work / "cache"
        t0 = time.perf_counter()
        data = synthetic(work, cache, args)
        made_s = time.perf_counter() - t0
    else:
        data, cache, made_s = args.data.absolute(), args.cache and args.cache.absolute(), None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cache is not None:
        env["A2P_CACHE_DIR"] = str(cache)

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    procs = args.procs if args.procs is not None else ([gpus] if gpus > 1 else [])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    runs = {"plain": [sys.executable, "-m", "a2pcli"],
            "torchrun_1": [*torchrun, "--nproc-per-node", "1", "-m", "a2pcli"]}
    for n in procs:
        runs[f"torchrun_{n}"] = [*torchrun, "--nproc-per-node", str(n), "-m", "a2pcli"]
    results = {}
    for name, launcher in runs.items():
        results[name] = run_training(launcher, data, work / f"model_{name}", args, env)
        print(f"{name}: {results[name]}", file=sys.stderr)
    base = results["plain"]
    for r in results.values():
        r["epoch_vs_plain"] = round(r["epoch_median_s"] / base["epoch_median_s"], 3) if base["epoch_median_s"] else None
        r["wall_minus_plain_s"] = round(r["wall_s"] - base["wall_s"], 1)
    print(json.dumps({"machine": machine(args.device), "device": args.device, "preset": args.preset,
                      "epochs": args.epochs, "batch_size": args.batch_size or "preset",
                      "data": str(args.data) if args.data else f"synthetic: {args.speakers} speakers x {args.clips} "
                      f"clips x {args.seconds:g} s (made in {made_s:.1f} s)", "runs": results}, indent=2))


if __name__ == "__main__":
    main()
