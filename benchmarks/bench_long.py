"""audio2video for any length: wall time and peak memory of the CLI for several lengths of speech.

    python benchmarks/bench_long.py [--seconds 10 60 600] [--size 512] [--device cpu]

The speech (../shared/media/sadtalker_RD_Radio31_000.wav by default) is looped to each length; each run is
one `a2p audio2video` process (generated head motion, --crop --size N). Prints one JSON object: per length
the wall time, the time per second of speech, and the peak resident memory of the process (ru_maxrss of
that child, its ffmpeg children included once they are waited for). Time should grow linearly with the
length and memory should not grow with it.
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


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one CLI process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "a2pcli", *args, "-q"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"a2p failed with exit code {proc.returncode}: {' '.join(args)}")
    return wall, usage.ru_maxrss / 1024  # Linux: kilobytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--portrait", type=Path, default=SHARED / "media" / "sadtalker_happy.png")
    ap.add_argument("--audio", type=Path, default=SHARED / "media" / "sadtalker_RD_Radio31_000.wav")
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0, 600.0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np

    from a2pcli.audio import SAMPLE_RATE, load_audio, write_wav

    tmp = Path(tempfile.mkdtemp())
    speech = load_audio(args.audio, SAMPLE_RATE)
    rows = []
    for seconds in args.seconds:
        n = int(seconds * SAMPLE_RATE)
        wav = tmp / f"speech_{seconds:g}.wav"
        write_wav(wav, np.tile(speech, int(np.ceil(n / len(speech))))[:n])
        out = tmp / f"talk_{seconds:g}.mp4"
        wall, rss = run(["audio2video", str(args.portrait), str(wav), "--crop", "--size", str(args.size),
                         "--device", args.device, "-o", str(out)])
        rows.append({"seconds_of_speech": seconds, "wall_s": round(wall, 2),
                     "s_per_speech_s": round(wall / seconds, 3), "peak_rss_mb": round(rss),
                     "output_mb": round(out.stat().st_size / 1e6, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        out.unlink()
        wav.unlink()
    print(json.dumps({"size": args.size, "device": args.device, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
