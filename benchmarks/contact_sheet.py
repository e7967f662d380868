"""Contact sheets: look at audio2video output as a user would.

For each (portrait, speech) pair, renders the first seconds with audio2video (the library call), then writes one
PNG: a row of frames every `--step` seconds (face crop, full resolution), and under it two curves
over the same time axis: the speech loudness (dB, grey) and the output's mouth opening measured by
MediaPipe on the rendered video (inner-lip gap over eye-corner distance, red). Pauses in the speech
must show a closed mouth; syllables must open it.

    python benchmarks/contact_sheet.py PORTRAIT SPEECH [PORTRAIT SPEECH ...] [--seconds 4] [--out sheets] [--mouth]
        [--mouth-model DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's a2p


def render(portrait: Path, speech: Path, seconds: float, tmp: Path, mouth_model: str | None = None) -> Path:
    """The first `seconds` of `speech` spoken by `portrait` (audio2video, seed 0, at most 512 px), into `tmp`."""
    from a2pcli import OutputOptions, PortraitOptions, RenderOptions, TalkJob, audio2video
    from a2pcli.audio import SAMPLE_RATE, load_audio, write_wav

    audio = load_audio(speech, SAMPLE_RATE, duration_s=seconds)
    cut = write_wav(tmp / f"{speech.stem}.wav", audio)
    out = tmp / f"{portrait.stem}_{speech.stem}.mp4"
    job = TalkJob(seed=0, portrait=PortraitOptions(max_size=512), render=RenderOptions(mouth_model=mouth_model),
                  output=OutputOptions(overwrite=True))
    audio2video(portrait, cut, out, job)
    return out


def sheet(video: Path, speech: Path, seconds: float, step: float, label: str, mouth: bool = False) -> np.ndarray:
    import cv2
    import imageio_ffmpeg

    from a2pcli.audio import SAMPLE_RATE, load_audio
    from a2pcli.landmarks import FaceMeshDetector, mouth_opening

    gen = imageio_ffmpeg.read_frames(str(video))
    meta = next(gen)
    w, h = meta["size"]
    fps = float(meta["fps"])
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    with FaceMeshDetector(video=True) as det:
        faces = [det.detect(f) for f in frames]
    opening = np.array([mouth_opening(f[0]) if f else np.nan for f in faces])
    lm0 = next(f[0] for f in faces if f)
    x0, y0 = lm0[:, :2].min(0)
    x1, y1 = lm0[:, :2].max(0)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.25
    box = [int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0)), int(min(cx + side / 2, w)), int(min(cy + side / 2, h))]

    tile = 160
    times = np.arange(0.0, min(seconds, len(frames) / fps) - 1e-6, step)
    tiles = []
    for t in times:
        f = frames[min(int(round(t * fps)), len(frames) - 1)][box[1]:box[3], box[0]:box[2]]
        f = cv2.resize(np.ascontiguousarray(f), (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.putText(f, f"{t:.1f}s", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(f)
    row = np.concatenate(tiles, axis=1)
    if mouth:  # a second row: the mouth, magnified
        from a2pcli import facemesh as fm

        lips = lm0[fm.LIPS, :2]
        mx, my = lips.mean(0)
        mside = max(np.ptp(lips[:, 0]), 1.0) * 1.8
        mbox = [int(max(mx - mside / 2, 0)), int(max(my - mside / 2, 0)), int(min(mx + mside / 2, w)),
                int(min(my + mside / 2, h))]
        zoom = []
        for t in times:
            f = frames[min(int(round(t * fps)), len(frames) - 1)][mbox[1]:mbox[3], mbox[0]:mbox[2]]
            zoom.append(cv2.resize(np.ascontiguousarray(f), (tile, tile), interpolation=cv2.INTER_CUBIC))
        row = np.concatenate([row, np.concatenate(zoom, axis=1)], axis=0)
    width = row.shape[1]

    audio = load_audio(speech, SAMPLE_RATE, duration_s=seconds)
    hop = 160
    n = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    plot_h = 140
    plot = np.full((plot_h, width, 3), 255, np.uint8)
    dur = len(tiles) * step

    def polyline(values, t, lo, hi, colour):
        ok = np.isfinite(values)
        xs = (t[ok] / dur * (width - 1)).astype(np.int32)
        ys = (plot_h - 6 - (np.clip(values[ok], lo, hi) - lo) / (hi - lo) * (plot_h - 12)).astype(np.int32)
        cv2.polylines(plot, [np.stack([xs, ys], 1)], False, colour, 1, cv2.LINE_AA)

    polyline(db, np.arange(n) * hop / SAMPLE_RATE, -60.0, 0.0, (150, 150, 150))
    top = np.nanmax(opening) if np.isfinite(opening).any() else 1.0
    polyline(opening, np.arange(len(opening)) / fps, 0.0, max(top, 0.05), (220, 30, 30))
    for i in range(1, len(tiles)):
        cv2.line(plot, (i * tile, 0), (i * tile, plot_h), (225, 225, 225), 1)
    cv2.putText(plot, f"{label}   grey: loudness -60..0 dB   red: mouth opening (MediaPipe on output)",
                (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([row, plot], axis=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", type=Path, help="PORTRAIT SPEECH pairs")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--step", type=float, default=0.2, help="seconds between frames on the sheet")
    ap.add_argument("--out", type=Path, default=Path("sheets"))
    ap.add_argument("--mouth", action="store_true", help="add a row of the mouth, magnified")
    ap.add_argument("--mouth-model", default=None, help="the mouth model: a registry name or a folder (default: "
                    "the shipped one)")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give PORTRAIT SPEECH pairs")
    import cv2

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        for portrait, speech in zip(args.pairs[::2], args.pairs[1::2]):
            video = render(portrait, speech, args.seconds, Path(td), args.mouth_model)
            img = sheet(video, speech, args.seconds, args.step, f"{portrait.name} + {speech.name}", args.mouth)
            dest = args.out / f"{portrait.stem}__{speech.stem}.png"
            cv2.imwrite(str(dest), img[..., ::-1])
            print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
