"""Same inputs and seed, same video: hashes of the decoded frames of a fixed set of commands, to compare two
versions of a2p (a change that should not alter any output, run before and after it).

    python benchmarks/same_frames.py --repo CHECKOUT [--weights TINY_ANIPORTRAIT_DIR] > after.json
    python benchmarks/same_frames.py --compare before.json after.json

Each case runs `python -m a2pcli ...` in CHECKOUT (the version under test; default: this one) on the shared
media, at small sizes, and records the sha256 of every decoded frame (rgb24, as ffmpeg decodes the H.264
output) and the frame count; `extract-pose` records the sha256 of the `.pose` arrays (not its `meta`,
which holds a timestamp). With `--weights` (an AniPortrait folder, e.g. the tests' tiny one), the diffusion
renderer is checked too, at its default seed. `--compare` prints the cases whose hashes differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(os.environ.get("A2P_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HERE = Path(__file__).resolve().parents[1]
SPEECH_RATE = 16000  # Hz: the test speech is written at the rate a2p reads (any version)
POSE_ARRAYS = ("landmarks", "valid", "filled", "rotation", "euler", "translation", "scale", "expression", "reference")


def a2p(repo: Path, *args) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "a2pcli", *map(str, args), "-q"], cwd=repo, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"a2p {' '.join(map(str, args))}: exit {proc.returncode}: {proc.stderr.strip()}")


def frames_digest(video: Path) -> dict:
    import imageio_ffmpeg

    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video), "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return {"sha256": hashlib.sha256(proc.stdout).hexdigest(), "bytes": len(proc.stdout)}


def pose_digest(path: Path) -> dict:
    import numpy as np

    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for k in POSE_ARRAYS:
            h.update(np.ascontiguousarray(z[k]).tobytes())
        frames = int(len(z["rotation"]))
    return {"sha256": h.hexdigest(), "frames": frames}


def cases(tmp: Path, weights: Path | None) -> list[tuple[str, list, str]]:
    """(name, arguments, output) of every case; outputs are written under tmp."""
    face, face2 = SHARED / "media" / "sadtalker_happy.png", SHARED / "media" / "liveportrait_s9.jpg"
    d0, d3 = SHARED / "media" / "liveportrait_d0.mp4", SHARED / "media" / "liveportrait_d3.mp4"
    speech = tmp / "speech.wav"
    pose = tmp / "d3.pose"
    out = [
        ("extract-pose d3 0-3 s", ["extract-pose", d3, "--end", "3", "-o", pose], pose),
        ("audio2video generated head, seed 3",
         ["audio2video", face, speech, "--crop", "--size", "192", "--seed", "3", "-o", tmp / "a.mp4"], tmp / "a.mp4"),
        ("audio2video .pose template, pose+eyes+brows",
         ["audio2video", face2, speech, "--pose", pose, "--template-region", "pose+eyes+brows", "--crop", "--size",
          "160", "-o", tmp / "b.mp4"], tmp / "b.mp4"),
        ("audio2video still, whole picture",
         ["audio2video", face, speech, "--still", "--blink-rate", "30", "--max-size", "256", "-o", tmp / "c.mp4"],
         tmp / "c.mp4"),
        ("vid2vid d0", ["vid2vid", face, d0, "--crop", "--size", "192", "-o", tmp / "d.mp4"], tmp / "d.mp4"),
        ("pose2vid lips with audio",
         ["pose2vid", face2, pose, "--region", "lips", "--audio", speech, "--crop", "--size", "160", "-o",
          tmp / "e.mp4"], tmp / "e.mp4"),
        ("pose2vid AniPortrait .npy template",
         ["pose2vid", face, HERE / "examples" / "head_motion.npy", "--crop", "--size", "160", "-o", tmp / "f.mp4"],
         tmp / "f.mp4"),
    ]
    if weights is not None:
        tiny = ["--renderer", "aniportrait", "--weights", weights, "--steps", "1", "--size", "64", "--device", "cpu"]
        out += [
            ("pose2vid diffusion renderer, default seed", ["pose2vid", face, pose, *tiny, "-o", tmp / "g.mp4"],
             tmp / "g.mp4"),
            ("audio2video diffusion renderer, seed 5",
             ["audio2video", face, speech, *tiny, "--seed", "5", "-o", tmp / "h.mp4"], tmp / "h.mp4"),
        ]
    return out


def measure(repo: Path, weights: Path | None) -> dict:
    import numpy as np
    import soundfile as sf

    results = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        import imageio_ffmpeg

        source = SHARED / "media" / "sadtalker_RD_Radio31_000.wav"
        raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-ss", "1", "-t", "2", "-i", str(source),
                              "-ac", "1", "-ar", str(SPEECH_RATE), "-f", "f32le", "-"],
                             capture_output=True, check=True).stdout
        sf.write(tmp / "speech.wav", np.frombuffer(raw, np.float32), SPEECH_RATE, subtype="PCM_16")
        for name, args, output in cases(tmp, weights):
            a2p(repo, *args)
            results[name] = pose_digest(output) if output.suffix == ".pose" else frames_digest(output)
            print(f"{name}: {results[name]['sha256'][:16]}", file=sys.stderr, flush=True)
    return results


def compare(before: dict, after: dict) -> int:
    differ = [k for k in before if k in after and before[k] != after[k]]
    for k in before:
        print(f"{'same' if k not in differ else 'DIFFERENT'}  {k}" if k in after else f"missing  {k}")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=HERE, help="the a2p checkout to run (default: this one)")
    ap.add_argument("--weights", type=Path, help="an AniPortrait pretrained_model folder: check the diffusion "
                    "renderer too")
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    print(json.dumps(measure(args.repo.resolve(), args.weights), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
