"""Head motion from speech (audio2pose) against real talkers, the hand-made rule, and a shuffled-speech control.

    python benchmarks/eval_headpose.py heldout --data DATA [--data ...] [--model M] [--seeds 5] [--all] [--out F]
    python benchmarks/eval_headpose.py long [--minutes 10] [--model M] [--out F]
    python benchmarks/eval_headpose.py rendered --data DATA [--clips 10] [--seconds 8] [--out F]

heldout: on the clips of the speakers the model was not trained on (its config lists them), the real head
  pose (MediaPipe, `a2p extract-pose`) and the motion generated from the clip's own speech are measured the
  same way: yaw/pitch/roll smoothed by a Gaussian of 0.06 s (MediaPipe's frame-to-frame jitter is left out
  of both), then per axis the standard deviation and the mean absolute velocity, averaged over clips, and
  the correlation of head speed with the speech's onsets (the rise of its loudness) per clip. The model's
  numbers are the mean over --seeds seeds; beside them the hand-made rule (`--head rule`) and the control
  (the model driven by another clip's speech, scored against this clip's onsets). The same correlation with
  the speech's pitch accents (pitch above its median over 1 s each side: stress), which loudness alone does not
  show. Paired differences (real - rule, model - rule, ...) with their standard errors over clips; --all adds
  the training clips (the model in-sample): with 61 clips, whether real talkers move with the speech more than
  the rule does. DATA: what `a2p train audio2pose` prepared (OUT/dataset.npz), or a folder of such files.
long: --minutes of speech (the corpus's speech files one after another): no drift (the mean pose of the
  last minute against the first's, per seed), and the time and peak-memory increase of the motion stage
  (features + network) in this process.
rendered: like for like through the renderer: the clip's first frame is the portrait, audio2video (the
  library's pipeline) renders its speech with the model (seed 0) and with the rule, MediaPipe reads the
  head pose of the videos and it is measured as the real clip's is (landmark noise included on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
AXES = ("yaw", "pitch", "roll")


def held_out_clips(model, data: list[Path], every: list | None = None):
    """The clips of the model's held-out speakers in the prepared data (every clip when the model was trained
    without validation). `every`: the data's clips, when already loaded."""
    names = {r["clip"] for r in (model.meta.get("validation") or {}).get("val_clips", [])}
    clips = every if every is not None else all_clips(data)
    if not names:  # a model without validation: every clip
        return clips
    return [c for c in clips if c.name in names]


def all_clips(data: list[Path]):
    from a2pcli.train.audio2pose.data import dataset_files, load_dataset

    files = [f for d in data for f in (dataset_files(d) if d.is_dir() else [d])]
    return [c for f in files for c in load_dataset(f)]


def heldout(args) -> dict:
    from a2pcli.audio2pose import load_model
    from a2pcli.train.audio2pose.evaluate import evaluate_clips, summarise

    model = load_model(args.model)
    every = all_clips(args.data)
    clips = held_out_clips(model, args.data, every)
    rows = evaluate_clips(model, clips, args.seeds, rule=True)
    s = summarise(rows)
    f = lambda v: " / ".join(f"{x:.2f}" for x in v)  # noqa: E731
    rs = lambda r, k: " / ".join(f"{r[f'{w}_{k}_r']:+.2f}" for w in ("real", "model", "rule", "control"))  # noqa: E731
    md = ["| held-out clip | s | real std | model std | rule std | real speed | model speed | rule speed "
          "| onset r real / model / rule / control | accent r real / model / rule / control |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {Path(r['clip']).name} | {r['seconds']:.1f} | {f(r['real_std'])} | {f(r['model_std'])} | "
           f"{f(r['rule_std'])} | {f(r['real_velocity'])} | {f(r['model_velocity'])} | {f(r['rule_velocity'])} | "
           f"{rs(r, 'onset')} | {rs(r, 'accent')} |" for r in rows]
    md += ["", "| mean over clips | std yaw / pitch / roll (deg) | speed yaw / pitch / roll (deg/s) | "
           "head speed vs onsets r | vs pitch accents r |", "|---|---|---|---|---|"]
    for who in ("real", "model", "rule", "control"):
        md.append(f"| {who} | {f(s[who + '_std'])} | {f(s[who + '_velocity'])} | {s[who + '_onset_r']:+.3f} | "
                  f"{s[who + '_accent_r']:+.3f} |")
    for who in ("model", "rule"):
        md.append(f"| {who} / real | {f(s[who + '_std_ratio'])} | {f(s[who + '_velocity_ratio'])} | | |")
    res = {"summary": s, "clips": rows}
    md += ["", *paired_table(rows, "held-out clips")]
    if args.all:  # the training clips too (the model in-sample): is real motion tied to the speech more than the rule?
        held = {c.name for c in clips}
        rest = [c for c in every if c.name not in held]
        rows_in = evaluate_clips(model, rest, args.seeds, rule=True)
        res["training_clips"] = {"summary": summarise(rows_in), "clips": rows_in}
        for folder in sorted({r["clip"].split("/")[0] for r in rows_in}):  # each data folder on its own (GRID apart)
            part = [r for r in rows_in if r["clip"].split("/")[0] == folder]
            res["training_clips"][folder] = summarise(part)
            md += ["", *paired_table(part, f"training clips of {folder}/ (the model in-sample)")]
    res["markdown"] = "\n".join(md)
    return res


def paired_table(rows: list[dict], what: str) -> list[str]:
    """Differences of the head-speed correlations between two kinds of motion on the same clips: mean, its
    standard error over clips, and on how many clips the first is higher."""
    out = [f"| {what}: {len(rows)} clips | onsets: difference ± s.e. (higher on) | pitch accents |", "|---|---|---|"]
    for a, b in (("real", "rule"), ("model", "rule"), ("model", "control"), ("real", "control")):
        cells = []
        for k in ("onset", "accent"):
            d = np.array([r[f"{a}_{k}_r"] - r[f"{b}_{k}_r"] for r in rows])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            cells.append(f"{d.mean():+.3f} ± {se:.3f} ({int((d > 0).sum())}/{len(d)})")
        out.append(f"| {a} - {b} | {cells[0]} | {cells[1]} |")
    return out


def long_speech(minutes: float) -> np.ndarray:
    """The corpus's speech files one after another, to `minutes` (cycled when they are too few)."""
    from a2pcli.audio import load_audio

    files = sorted((SHARED / "corpus" / "speech").glob("*"))
    need = int(minutes * 60 * 16000)
    parts, have = [], 0
    while have < need:
        for f in files:
            try:
                a = load_audio(f, 16000, duration_s=60.0)
            except Exception:  # noqa: BLE001  (a file ffmpeg cannot read is skipped)
                continue
            parts.append(a)
            have += len(a)
            if have >= need:
                break
    return np.concatenate(parts)[:need]


def long_run(args) -> dict:
    import torch

    from a2pcli.audio2pose import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.model)
    speech = long_speech(args.minutes)
    model.generate(speech[: 10 * 16000], 25.0)  # warm-up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        m = model.generate(speech, 25.0, seed=seed)
        dt = time.perf_counter() - t0
        first, last = m[: 60 * 25].mean(0), m[-60 * 25 :].mean(0)
        rows.append({"seed": seed, "seconds": round(dt, 2), "first_minute_mean": np.round(first, 3).tolist(),
                     "last_minute_mean": np.round(last, 3).tolist(),
                     "drift_deg": np.round(np.abs(last - first)[:3], 3).tolist(),
                     "std_deg": np.round(m[:, :3].std(0), 3).tolist()})
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"minutes": args.minutes, "runs": rows, "median_s": float(np.median([r["seconds"] for r in rows])),
            "x_realtime": round(args.minutes * 60 / float(np.median([r["seconds"] for r in rows])), 1),
            "peak_rss_increase_mb": round((rss1 - rss0) / 1024, 1),
            "max_drift_deg": float(np.max([r["drift_deg"] for r in rows]))}


def rendered(args) -> dict:
    from a2pcli.audio2pose import load_model
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.pipeline.models import Models
    from a2pcli.pipeline.options import OutputOptions, TalkJob
    from a2pcli.pipeline.portrait import PortraitOptions
    from a2pcli.pipeline.talking import audio2video
    from a2pcli.talk import TalkOptions
    from a2pcli.train.audio2pose.evaluate import motion_stats

    model = load_model(args.model)
    clips = held_out_clips(model, args.data)[: args.clips]
    tmp = Path(tempfile.mkdtemp())
    models = Models()
    rows = []
    for c in clips:
        video = SHARED / "corpus" / c.name.split("/")[0] / Path(c.name).name
        if not video.is_file():
            print(f"{c.name}: video not found, skipped", file=sys.stderr)
            continue
        n = min(len(c.pose), int(args.seconds * c.fps))
        row = {"clip": Path(c.name).name, "frames": n, "real": motion_stats(c.pose[:n, :3], c.fps)}
        portrait, speech = _portrait_and_speech(video, n / c.fps, tmp)
        for who, head in (("model", args.model or "audio2pose"), ("rule", "rule")):
            out = tmp / f"{video.stem}_{who}.mp4"
            job = TalkJob(seed=0, talk=TalkOptions(head=head), portrait=PortraitOptions(max_size=512),
                          output=OutputOptions(overwrite=True))
            audio2video(portrait, speech, out, job, models=models)
            motion, _ = extract_motion(out, ExtractOptions())
            row[who] = motion_stats(motion.euler, motion.fps)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    s = {}
    for who in ("real", "model", "rule"):
        s[f"{who}_std"] = np.round(np.mean([r[who]["std"] for r in rows], 0), 3).tolist()
        s[f"{who}_velocity"] = np.round(np.mean([r[who]["velocity"] for r in rows], 0), 3).tolist()
    for who in ("model", "rule"):
        s[f"{who}_std_ratio"] = np.round(np.array(s[f"{who}_std"]) / np.array(s["real_std"]), 3).tolist()
        s[f"{who}_velocity_ratio"] = np.round(np.array(s[f"{who}_velocity"]) / np.array(s["real_velocity"]), 3).tolist()
    return {"summary": s, "clips": rows}


def _portrait_and_speech(video: Path, seconds: float, tmp: Path) -> tuple[Path, Path]:
    import cv2
    import soundfile as sf

    from a2pcli.audio import load_audio, probe_audio
    from a2pcli.media import probe_video, stream_frames

    first = next(iter(stream_frames(probe_video(video))))
    portrait = tmp / f"{video.stem}.png"
    cv2.imwrite(str(portrait), first[..., ::-1])
    wav = video.with_suffix(".wav")
    src = wav if wav.exists() else video
    if probe_audio(src) is None:
        raise SystemExit(f"{video}: no speech")
    speech = tmp / f"{video.stem}.wav"
    sf.write(speech, load_audio(src, 16000, duration_s=seconds), 16000)
    return portrait, speech


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("heldout")
    h.add_argument("--data", type=Path, action="append", required=True)
    h.add_argument("--seeds", type=int, default=5)
    h.add_argument("--all", action="store_true", help="also measure the training clips (the model in-sample) and "
                   "compare real motion with the rule on them, per data folder")
    lo = sub.add_parser("long")
    lo.add_argument("--minutes", type=float, default=10.0)
    lo.add_argument("--seeds", type=int, default=3)
    r = sub.add_parser("rendered")
    r.add_argument("--data", type=Path, action="append", required=True)
    r.add_argument("--clips", type=int, default=10)
    r.add_argument("--seconds", type=float, default=8.0)
    for p in (h, lo, r):
        p.add_argument("--model", default=None, help="audio2pose model folder (default: the shipped one)")
        p.add_argument("--out", type=Path, default=None, help="write the result here (.json, and .md for heldout)")
    args = ap.parse_args()
    res = {"heldout": heldout, "long": long_run, "rendered": rendered}[args.cmd](args)
    res["date"] = time.strftime("%Y-%m-%d")
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        if "markdown" in res:
            args.out.with_suffix(".md").write_text(res["markdown"] + "\n")
    print(res.get("markdown") or json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
