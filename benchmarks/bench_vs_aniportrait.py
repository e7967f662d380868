"""AniPortrait's own inference code and a2p's diffusion renderer, timed one after the other in one call on
the same GPU, with the GPU's utilisation sampled throughout.

    python benchmarks/bench_vs_aniportrait.py --reference ../shared/bench/aniportrait-reference \
        --ani-site SITE_ANI [--a2p-site SITE_A2P] [--frames 90] [--steps 25] [--a2p-args "--compile"]

`--ani-site` is a folder holding diffusers 0.24.0 (AniPortrait's pin), installed apart from a2p's diffusers
(`pip install --no-deps --target SITE_ANI diffusers==0.24.0`); `--a2p-site` one with a2p's diffusers when
it is not the environment's own. Each side runs in its own process (`bench_ani_orig.py` from the reference
folder, `bench_aniportrait.py` from here) with the same settings: 512x512, 25 DDIM steps, CFG 3.5, fp16,
16-frame windows with overlap 4, a warm-up first. `nvidia-smi` is sampled every 0.5 s; the utilisation
reported is the mean over a2p's timed window loop (the samples also stream into --logs, with each side's
output, so an interrupted call keeps what was measured). Prints both results, the ratio of the end-to-end
times and both peaks as a table, then one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MS = 500  # nvidia-smi sampling period


class GpuSampler:
    """`nvidia-smi --query-gpu=utilization.gpu,memory.used -lms 500` on a thread; each line stamped
    with the wall clock when it arrived."""

    def __init__(self, index: int = 0, log: Path | None = None):
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        self.log = open(log, "w") if log is not None else None  # the samples as they come (kept if interrupted)
        cmd = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu,memory.used",
               "--format=csv,noheader,nounits", f"-lms={SAMPLE_MS}"]
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.time(), float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue
            if self.log is not None:
                self.log.write("%.3f %.0f %.0f\n" % self.samples[-1])
                self.log.flush()

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.log is not None:
            self.log.close()

    def window(self, start: float, end: float) -> dict:
        """Utilisation over [start, end] (wall clock): mean, minimum, share of samples >= 90 %."""
        u = [s[1] for s in self.samples if start <= s[0] <= end]
        if not u:
            return {"samples": 0}
        return {"samples": len(u), "mean_pct": round(sum(u) / len(u), 1), "min_pct": min(u),
                "share_ge_90_pct": round(sum(x >= 90 for x in u) / len(u), 3)}


def run_json(cmd: list[str], env: dict, log: Path | None, cwd: Path) -> dict:
    """Run one benchmark process; its last stdout JSON object. Its stderr (one line per run) streams
    into the log as it comes, so an interrupted call keeps what was measured."""
    import tempfile

    t = time.perf_counter()
    with (open(log, "w") if log is not None else tempfile.TemporaryFile("w+")) as err:
        err.write(f"$ {shlex.join(cmd)}\n")
        err.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t
    if log is not None:
        with open(log, "a") as f:
            f.write(f"--- stdout\n{proc.stdout}")
    if proc.returncode != 0:
        tail = "\n".join(Path(log).read_text().strip().splitlines()[-15:]) if log is not None else ""
        raise SystemExit(f"{cmd[1]} failed (exit {proc.returncode}):\n{tail}")
    lines = proc.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the indented JSON object printed last
    obj = json.loads("\n".join(lines[start:]))
    obj["process_wall_s"] = round(wall, 1)
    return obj


def with_path(env: dict, *folders) -> dict:
    paths = [str(f) for f in folders if f] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="the aniportrait-reference folder")
    ap.add_argument("--ani-site", type=Path, required=True, help="folder with diffusers 0.24.0 for AniPortrait")
    ap.add_argument("--a2p-site", type=Path, help="folder with a2p's diffusers, if not the environment's")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--pose", type=Path, help="a .pose file for a2p's pose frames (see bench_aniportrait.py)")
    ap.add_argument("--a2p-args", default="", help="more options for bench_aniportrait.py, e.g. \"--compile\"")
    ap.add_argument("--skip-reference", action="store_true", help="a2p only")
    ap.add_argument("--cpu-check", action="store_true", help="tiny networks on the CPU (checks this script only)")
    ap.add_argument("--logs", type=Path, help="folder for each process's full output")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    common = ["--frames", str(args.frames), "--steps", str(args.steps), "--cfg", str(args.cfg),
              "--size", str(args.size)]
    if args.cpu_check:
        common += ["--tiny", "--device", "cpu"]
    env = dict(os.environ)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    gpu = GpuSampler(log=args.logs / "gpu_samples.txt" if args.logs else None)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "settings": {
        "frames": args.frames, "steps": args.steps, "cfg": args.cfg, "size": args.size, "a2p_args": args.a2p_args}}
    try:
        if not args.skip_reference:
            warm = ["--warm-frames", "16", "--warm-steps", "1" if args.cpu_check else "3"]
            ani = run_json([sys.executable, "bench_ani_orig.py", *common, *warm],
                           with_path(env, args.ani_site), args.logs and args.logs / "aniportrait.log",
                           cwd=args.reference)
            timed = ani["runs"][-1]
            result["aniportrait"] = {
                "diffusers": ani.get("diffusers"), "torch": ani.get("torch"), "device": ani.get("device"),
                "total_s": timed["total_s"], "per_window_step_s": timed["per_window_step_s"],
                "peak_vram_gb": timed.get("peak_vram_gb"), "attn_processor": ani.get("attn_processor"),
                "gpu_util_whole_call": gpu.window(timed["wall_start"], timed["wall_end"])}
        a2p_cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_aniportrait.py"), *common,
                   *(["--pose", str(args.pose)] if args.pose else []), *shlex.split(args.a2p_args)]
        mine = run_json(a2p_cmd, with_path(env, args.a2p_site, ROOT), args.logs and args.logs / "a2p.log", cwd=ROOT)
        run = mine["runs"][0]
        result["a2p"] = {
            "diffusers": mine.get("diffusers"), "torch": mine.get("torch"), "device": mine.get("device"),
            "settings": mine.get("settings"), "total_s": run["total_s"], "per_window_step_s": run["per_window_step_s"],
            "sample_s": run["sample_s"], "decode_s": run["decode_s"], "peak_vram_gb": run.get("peak_vram_gb"),
            "warmup_s": mine.get("warmup_s"), "build_s": mine.get("build_s"),
            "gpu_util_window_loop": gpu.window(*run["loop_wall"])}
        if "compile_cache" in mine:
            result["a2p"]["compile_cache_at_start"] = mine["compile_cache"]
    finally:
        gpu.stop()
    if "aniportrait" in result:
        a, b = result["aniportrait"], result["a2p"]
        result["speedup_end_to_end"] = round(a["total_s"] / b["total_s"], 2)
        result["speedup_per_window_step"] = round(a["per_window_step_s"] / b["per_window_step_s"], 2)
        gb = (lambda v: "" if v is None else f"{v:.2f} GB")
        rows = [("", "end to end", "per window-step", "peak VRAM"),
                (f"AniPortrait (diffusers {a['diffusers']})", f"{a['total_s']:.1f} s",
                 f"{a['per_window_step_s']:.3f} s", gb(a["peak_vram_gb"])),
                (f"a2p {args.a2p_args}".strip(), f"{b['total_s']:.1f} s", f"{b['per_window_step_s']:.3f} s",
                 gb(b["peak_vram_gb"])),
                ("AniPortrait / a2p", f"{result['speedup_end_to_end']:.2f}x",
                 f"{result['speedup_per_window_step']:.2f}x", "")]
        for r in rows:
            print(f"{r[0]:<40} {r[1]:>12} {r[2]:>16} {r[3]:>10}", file=sys.stderr)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
