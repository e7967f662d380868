"""Lip sync on speakers the model never saw, measured on rendered video.

For each held-out clip of the shipped audio2motion model (its config lists them), the clip's first frame
is the portrait and its own speech the audio: `a2p audio2video` renders it, MediaPipe reads the output,
and the output's mouth opening (inner-lip gap over eye-corner distance) is correlated with the real
clip's, frame by frame. Also the spread ratio (output std over real std) and a loudness-envelope baseline.
Diagnostics: motion r, the mouth opening of the landmarks a2p commands (the same motion, computed here)
against the real clip's, and render r, the rendered video's against the commanded: a loss in r splits
into what the motion loses and what the renderer and re-detection lose.

    python benchmarks/eval_lipsync.py [--seconds 8] [--out lipsync]

Bars: mean r >= 0.5; spread ratio 0.6 to 1.5.
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

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FPS = 25.0


def mouth_series(frames, det) -> np.ndarray:
    from a2pcli.landmarks import mouth_opening

    out = []
    for f in frames:
        faces = det.detect(f)
        out.append(mouth_opening(faces[0]) if faces else np.nan)
    return np.array(out, np.float64)


def clip_frames(path: Path, seconds: float, max_side: int = 512):
    from a2pcli.media import decode_size, probe_video, stream_frames

    info = probe_video(path)
    size = decode_size(info, max_side)
    return [f.copy() for f in stream_frames(info, size=size, fps=FPS, end=seconds)]


def commanded_series(portrait: Path, audio: np.ndarray, models) -> np.ndarray:
    """The mouth opening of the target landmarks `a2p audio2video --max-size 512 --seed 0` renders (the library's
    pipeline, without rendering)."""
    from a2pcli.landmarks import mouth_opening
    from a2pcli.pipeline.options import TalkJob
    from a2pcli.pipeline.portrait import PortraitOptions
    from a2pcli.pipeline.talking import talk_motion

    job = TalkJob(seed=0, fps=FPS, portrait=PortraitOptions(max_size=512))
    _, tgt, _ = talk_motion(portrait, audio, job, models=models)
    return mouth_opening(tgt.landmarks).astype(np.float64)


def _r(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def evaluate(clip: Path, seconds: float, tmp: Path, models) -> dict:
    import cv2

    from a2pcli.audio import SAMPLE_RATE, load_audio, probe_audio, write_wav
    from a2pcli.landmarks import FaceMeshDetector
    from a2pcli.talk import loudness

    real = clip_frames(clip, seconds)
    wav = clip.with_suffix(".wav")
    audio_src = wav if wav.exists() else clip
    if probe_audio(audio_src) is None:
        raise ValueError("no audio")
    audio = load_audio(audio_src, SAMPLE_RATE, duration_s=len(real) / FPS)
    speech = write_wav(tmp / f"{clip.stem}.wav", audio)
    portrait = tmp / f"{clip.stem}.png"
    cv2.imwrite(str(portrait), real[0][..., ::-1])
    out = tmp / f"{clip.stem}.mp4"
    subprocess.run([sys.executable, "-m", "a2pcli", "audio2video", str(portrait), str(speech), "-o", str(out),
                    "--max-size", "512", "--seed", "0", "-q"], check=True)
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(out))
    meta = next(gen)
    w, h = meta["size"]
    rendered = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    with FaceMeshDetector(video=True) as det:
        m_real = mouth_series(real, det)
    with FaceMeshDetector(video=True) as det:
        m_out = mouth_series(rendered, det)
    n = min(len(m_real), len(m_out))
    m_real, m_out = m_real[:n], m_out[:n]
    env = loudness(audio, FPS, n)
    ok = np.isfinite(m_real) & np.isfinite(m_out)
    r = float(np.corrcoef(m_real[ok], m_out[ok])[0, 1])
    r_env = float(np.corrcoef(m_real[ok], env[ok])[0, 1])
    m_cmd = commanded_series(portrait, audio, models)[:n]
    m_cmd = np.pad(m_cmd, (0, n - len(m_cmd)), constant_values=np.nan)
    return {"clip": clip.name, "frames": int(ok.sum()), "r": round(r, 3), "envelope_r": round(r_env, 3),
            "spread": round(float(np.std(m_out[ok]) / max(np.std(m_real[ok]), 1e-9)), 3),
            "motion_r": round(_r(m_cmd, m_real), 3), "render_r": round(_r(m_out, m_cmd), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from a2pcli.pipeline.models import Models

    models = Models()
    cfg = models.audio2motion().meta
    held_out = [Path(c["clip"]).name for c in cfg["validation"]["val_clips"]]
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name in held_out:
        clip = SHARED / "corpus" / "train" / name
        try:
            rows.append(evaluate(clip, args.seconds, tmp, models))
            print(rows[-1], file=sys.stderr)
        except Exception as exc:  # a clip without a face or audio is reported, not fatal
            print(f"{name}: skipped ({exc})", file=sys.stderr)
    summary = {"clips": len(rows), "mean_r": round(float(np.mean([r["r"] for r in rows])), 3),
               "mean_envelope_r": round(float(np.mean([r["envelope_r"] for r in rows])), 3),
               "mean_spread": round(float(np.mean([r["spread"] for r in rows])), 3),
               "mean_motion_r": round(float(np.mean([r["motion_r"] for r in rows])), 3),
               "mean_render_r": round(float(np.mean([r["render_r"] for r in rows])), 3)}
    md = ["| held-out clip | frames | r | envelope r | spread | motion r | render r |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['clip']} | {r['frames']} | {r['r']:+.2f} | {r['envelope_r']:+.2f} | {r['spread']:.2f} "
           f"| {r['motion_r']:+.2f} | {r['render_r']:+.2f} |" for r in rows]
    md.append(f"\nMean r {summary['mean_r']:.2f} (envelope {summary['mean_envelope_r']:.2f}), "
              f"mean spread {summary['mean_spread']:.2f}; motion r {summary['mean_motion_r']:.2f}, "
              f"render r {summary['mean_render_r']:.2f}.")
    report = {"summary": summary, "clips": rows}
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
