"""audio2video speed: 10 s of speech -> 512x512 video end to end, and where the time goes.

    python benchmarks/bench_audio2video.py [--portrait IMG] [--audio SPEECH] [--seconds 10] [--device cpu]

Defaults: ../shared/media/sadtalker_happy.png and ../shared/media/sadtalker_RD_Radio31_000.wav (looped or cut
to --seconds). Prints one JSON object: the whole command's wall time (interpreter start-up included), the
time to its first progress line, and the stages (audio decode, speech to motion, head motion, face,
render + encode), once with generated head motion and once with a template.
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

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def timed_cli(args: list[str]) -> dict:
    """Run the CLI with --progress json; wall time, time to the first progress line, stage timestamps."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "a2pcli", *args, "--progress", "json", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, stages = None, {}
    for line in proc.stderr:
        now = time.perf_counter() - t0
        first = first if first is not None else now
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "progress" and ev.get("stage") not in stages:
            stages[ev["stage"]] = round(now, 3)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"a2p failed: {out}")
    return {"wall_s": round(time.perf_counter() - t0, 2), "first_progress_s": round(first or 0, 3),
            "stage_starts_s": stages, "summary": json.loads(out)}


def in_process(args) -> dict:
    """The library's audio2video pipeline (a2pcli.pipeline.talking), timed stage by stage in this process:
    speech -> motion -> target landmarks -> rendered, encoded video."""
    import numpy as np

    t0 = time.perf_counter()
    from a2pcli.audio import SAMPLE_RATE, load_audio
    from a2pcli.pipeline.options import RenderOptions, TalkJob
    from a2pcli.pipeline.portrait import Portrait
    from a2pcli.pipeline.talking import TalkRun
    from a2pcli.retarget import portrait_face

    times = {"imports": time.perf_counter() - t0}
    t = time.perf_counter()
    import torch  # noqa: F401 - timed on its own: seconds with a CUDA build of torch

    times["import_torch"] = time.perf_counter() - t
    run = TalkRun(TalkJob(render=RenderOptions(device=args.device)))
    t = time.perf_counter()
    run.prepare()
    times["load_model"] = time.perf_counter() - t
    with np.load(args.bundle) as z:
        portrait = Portrait(z["image"], portrait_face(z["landmarks"], run.models.reference()), args.portrait, 1)
    out = Path(tempfile.mkdtemp()) / "talk.mp4"

    def clip() -> dict:
        """One clip's stages: audio, speech to motion, targets (head, blinks, lips), render and encode."""
        stage = {}
        t = time.perf_counter()
        n = int(args.seconds * SAMPLE_RATE)
        speech = load_audio(args.audio, SAMPLE_RATE)
        speech = np.tile(speech, int(np.ceil(n / len(speech))))[:n]
        stage["audio"] = time.perf_counter() - t
        t = time.perf_counter()
        motion = run.speech(speech)
        stage["audio_and_speech_to_motion"] = time.perf_counter() - t
        t = time.perf_counter()
        tgt, _ = run.targets(portrait, motion)
        stage["head_blinks_targets"] = time.perf_counter() - t
        t = time.perf_counter()
        summary = run.renderer.render(portrait, tgt, run.job.fps, out, motion.track, run.reporter)
        stage["render_and_encode"] = time.perf_counter() - t
        return {**stage, "frames": summary["frames"], "device": summary["device"], "batch": summary["batch_size"]}

    first = clip()
    res = {k: round(v, 3) if isinstance(v, float) else v for k, v in {**times, **first}.items()}
    res["total_s"] = round(time.perf_counter() - t0, 3)
    # later clips of a batch in the same process (what `a2p audio2video faces/*.png speech.wav` and
    # shell loops over a long-lived process pay): audio, speech to motion, targets, render, encode
    later = []
    for _ in range(max(0, args.clips - 1)):
        t = time.perf_counter()
        clip()
        later.append(round(time.perf_counter() - t, 3))
    if later:
        res["later_clips_s"] = later
    run.close()
    return res


PHASES = r"""
import json, time
t = [time.perf_counter()]
def mark(): t.append(time.perf_counter())
import torch; mark()
torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); mark()
x = torch.rand(64, 64, device="cuda"); (x @ x).sum().item(); mark()
torch.linalg.solve(x[None] + 64 * torch.eye(64, device="cuda"), x[None]).sum().item(); mark()
g = torch.zeros(1, 8, 8, 2, device="cuda")
torch.nn.functional.grid_sample(x[None, None], g, align_corners=True).sum().item(); mark()
torch.nn.functional.interpolate(x[None, None], scale_factor=2, mode="bilinear").sum().item(); mark()
names = ["import_torch", "cuda_context", "first_matmul_cublas", "first_solve", "first_grid_sample", "first_interpolate"]
print(json.dumps({n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}))
"""


def cuda_phases() -> dict:
    """A fresh interpreter's GPU start-up, phase by phase (seconds), three times."""
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PHASES], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        r["process_total"] = round(time.perf_counter() - t0, 3)
        runs.append(r)
    return {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--portrait", type=Path, default=SHARED / "media" / "sadtalker_happy.png")
    ap.add_argument("--audio", type=Path, default=SHARED / "media" / "sadtalker_RD_Radio31_000.wav")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bundle", type=Path, help="portrait bundle from bench_render.py --save-bundle: time the whole "
                    "pipeline in this process, without face detection (for a machine without mediapipe)")
    ap.add_argument("--clips", type=int, default=1, help="with --bundle: render this many clips in the process "
                    "(the later ones show the per-clip cost of a batch)")
    ap.add_argument("--cuda-phases", action="store_true", help="time a fresh process's GPU start-up, phase by phase")
    args = ap.parse_args()
    if args.cuda_phases:
        print(json.dumps(cuda_phases(), indent=2))
        return
    if args.bundle:
        print(json.dumps(in_process(args), indent=2))
        return

    import numpy as np

    from a2pcli.audio import SAMPLE_RATE, load_audio, write_wav

    tmp = Path(tempfile.mkdtemp())
    speech = load_audio(args.audio, SAMPLE_RATE)
    n = int(args.seconds * SAMPLE_RATE)
    speech = np.tile(speech, int(np.ceil(n / len(speech))))[:n]
    wav = write_wav(tmp / "speech.wav", speech)
    template = tmp / "template.npy"
    t = np.arange(60) / 30
    np.save(template, np.stack([np.zeros_like(t), 8 * np.sin(t), 0 * t, 0 * t, 0 * t, 0 * t], 1).astype(np.float32))

    # the model alone, in this process (features + network), and the head-motion model alone
    from a2pcli.pipeline.models import Models

    models = Models()
    model = models.audio2motion()
    model.predict(speech, 25.0)  # warm-up at full length (allocations)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.predict(speech, 25.0)
        runs.append(time.perf_counter() - t0)
    model_s = float(np.median(runs))
    pose_model = models.audio2pose()
    t0 = time.perf_counter()
    pose_model.generate(speech, 25.0, int(args.seconds * 25), seed=0)
    head_s = time.perf_counter() - t0

    common = ["audio2video", str(args.portrait), str(wav), "--crop", "--size", "512", "--device", args.device]
    res = {
        "seconds_of_speech": args.seconds,
        "model_s": round(model_s, 3),
        "model_x_realtime": round(args.seconds / max(model_s, 1e-9), 1),
        "head_motion_model_s": round(head_s, 4),
        "generated": timed_cli(common + ["-o", str(tmp / "gen.mp4")]),
        "template": timed_cli(common + ["--pose", str(template), "-o", str(tmp / "tpl.mp4")]),
    }
    for k in ("generated", "template"):
        summary = res[k]["summary"]
        one = summary["outputs"][0] if "outputs" in summary else summary  # the summary of the command's one output
        res[k]["summary"] = {key: one.get(key) for key in ("frames", "elapsed_s", "timings_s", "device")}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
