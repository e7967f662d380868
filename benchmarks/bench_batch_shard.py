"""A batch of audio2video jobs in one process, through torchrun with one process (the cost of the torchrun path
against the plain run) and with P processes (on a machine with one GPU they share it; with several, one each).

    python benchmarks/bench_batch_shard.py [--jobs 16] [--seconds 10] [--size 512] [--procs 2 4] [--device auto]
    python benchmarks/bench_batch_shard.py --portrait face.png --audio speech.wav      # your own inputs

Each run is one command in a fresh process, as a user starts it, with its own output folder:
`python -m a2pcli batch jobs.jsonl -o DIR` and `python -m torch.distributed.run --standalone --nproc-per-node P
-m a2pcli batch jobs.jsonl -o DIR`. The manifest holds --jobs audio2video jobs of one portrait (default: the
repository's examples/astronaut.jpg, --crop --size 512) speaking --seconds of speech (examples/speech.flac,
looped), seeds 0..N-1, each its own video. A warm-up run of one job comes first (file caches, CUDA start-up),
not reported. Reported per run: wall seconds of the whole command (start-up and model loads included), jobs per
minute, the mean seconds of one job from the results file (per process: its jobs one after the other), the
processes' start-up (wall minus the slowest process's jobs), and the ratio to the plain run. With P processes
OMP_NUM_THREADS is set to cores / P (torchrun would set 1). Prints one JSON object.

Needs torch plus the a2p package with what audio2video on the embedded renderer imports: numpy (<2),
mediapipe 0.10.21 (finds the face; pulls its own dependencies), opencv-python-headless (<4.12), imageio-ffmpeg
(decodes the speech, encodes the videos), typer, click, rich, safetensors, platformdirs, filelock and pillow:

    pip install "mediapipe==0.10.21" "numpy<2" "opencv-python-headless<4.12" imageio-ffmpeg typer click rich \\
        safetensors platformdirs filelock pillow

No librosa, diffusers or transformers (the diffusion renderer is not used), no network.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's a2p, also for the commands (run in ROOT)
EXAMPLES = ROOT / "examples"


def make_inputs(folder: Path, args) -> tuple[Path, Path]:
    """The portrait, and the speech looped to --seconds (a wav in `folder`)."""
    import numpy as np

    from a2pcli.audio import SAMPLE_RATE, load_audio, write_wav

    if args.audio is not None:
        return args.portrait.absolute(), args.audio.absolute()
    speech = load_audio(EXAMPLES / "speech.flac", SAMPLE_RATE)
    n = int(args.seconds * SAMPLE_RATE)
    return args.portrait.absolute(), write_wav(folder / "speech.wav", np.resize(speech, n).astype(np.float32))


def write_jobs(path: Path, portrait: Path, audio: Path, jobs: int, args) -> Path:
    lines = [{"command": "audio2video", "portrait": str(portrait), "audio": str(audio), "seed": seed,
              "output": f"job{seed:04d}.mp4", "crop": True, "size": args.size, "device": args.device}
             for seed in range(jobs)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run_batch(launcher: list[str], manifest: Path, out: Path, env: dict) -> dict:
    """One batch command -> its wall time and what its results file says."""
    cmd = [*launcher, "batch", str(manifest), "-o", str(out), "--progress", "none", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / f"{manifest.stem}.results.jsonl").read_text().splitlines()]
    per_rank: dict[int, float] = {}
    for r in rows:
        per_rank[r["rank"]] = per_rank.get(r["rank"], 0.0) + r["elapsed_s"]
    busiest = max(per_rank.values())
    return {"wall_s": round(wall, 2), "jobs": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "jobs_per_min": round(60 * len(rows) / wall, 1),
            "job_mean_s": round(sum(r["elapsed_s"] for r in rows) / len(rows), 3),
            "jobs_per_process": {str(k): sum(r["rank"] == k for r in rows) for k in sorted(per_rank)},
            "busiest_process_jobs_s": round(busiest, 2), "startup_and_end_s": round(wall - busiest, 2)}


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=16, help="audio2video jobs in the manifest")
    ap.add_argument("--seconds", type=float, default=10.0, help="speech per job (the example speech, looped)")
    ap.add_argument("--size", type=int, default=512, help="side of the square crop rendered")
    ap.add_argument("--procs", type=int, nargs="*", default=[2, 4], help="process counts to run beside 1")
    ap.add_argument("--device", default="auto", help="each job's --device (auto: the process's GPU, else the CPU)")
    ap.add_argument("--portrait", type=Path, default=EXAMPLES / "astronaut.jpg")
    ap.add_argument("--audio", type=Path, default=None, help="speech for every job (default: the example, looped)")
    ap.add_argument("--keep", type=Path, default=None, help="write the inputs and the runs' outputs here")
    args = ap.parse_args()

    work = (args.keep or Path(tempfile.mkdtemp(prefix="bench-batch-shard-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    portrait, audio = make_inputs(work, args)
    manifest = write_jobs(work / "jobs.jsonl", portrait, audio, args.jobs, args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    plain = [sys.executable, "-m", "a2pcli"]

    run_batch(plain, write_jobs(work / "warmup.jsonl", portrait, audio, 1, args), work / "out_warmup", env)
    runs = {"plain": (plain, env), "torchrun_1": ([*torchrun, "--nproc-per-node", "1", "-m", "a2pcli"], env)}
    for n in args.procs:
        threads = str(max(1, (os.cpu_count() or 1) // n))
        runs[f"torchrun_{n}"] = ([*torchrun, "--nproc-per-node", str(n), "-m", "a2pcli"],
                                 {**env, "OMP_NUM_THREADS": threads})
    results = {}
    for name, (launcher, run_env) in runs.items():
        results[name] = run_batch(launcher, manifest, work / f"out_{name}", run_env)
        print(f"{name}: {results[name]}", file=sys.stderr)
    base = results["plain"]
    for r in results.values():
        r["wall_vs_plain"] = round(r["wall_s"] / base["wall_s"], 3)
        r["wall_minus_plain_s"] = round(r["wall_s"] - base["wall_s"], 2)
    print(json.dumps({"machine": machine(), "jobs": args.jobs, "seconds_per_job": args.seconds, "size": args.size,
                      "device": args.device, "portrait": str(portrait), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
