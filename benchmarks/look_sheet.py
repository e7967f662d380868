"""Contact sheets for mouths, blinks and head turns: look at the widest mouth, the quietest moment, the eyes
at a blink's peak and the background while the head turns, as a user would.

For each (portrait, speech) pair, one PNG: face crops of `a2p audio2video` at its three widest mouths and in
the speech's quietest half second (mouth gap MediaPipe measures written on them: inner-lip gap over the eye
corners' distance); a row of eye crops through the first blinks (two frames before the peak, the peak, three
frames after), the blink depth MediaPipe measures at each peak written on it; and a row of whole frames of `a2p vid2vid --region pose` with a driving video that turns: the
portrait, the head turned furthest one way and the other, and tilted furthest up and down (yaw and pitch of
the driving motion).

    python benchmarks/look_sheet.py [PORTRAIT SPEECH ...] [--driving VIDEO_OR_POSE] [--seconds 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import eval_background as bg
import eval_blinks as bl

DEFAULT_PAIRS = ((bl.MEDIA / "sadtalker_happy.png", bl.EN), (bl.MEDIA / "liveportrait_s9.jpg", bl.ZH),
                 (bl.PORTRAITS / "KwaiVGI__LivePortrait__s7.jpg", bl.JA), (bl.MEDIA / "sadtalker_full_body_1.png", bl.EN))
TILE = 200  # pixels: height of a row's tiles
BLINK_OFFSETS = (-2, 0, 3)  # frames around each peak
BLINKS_SHOWN = 2
WIDE_SHOWN = 3  # widest mouths, at least WIDE_APART frames apart
WIDE_APART = 12
QUIET_S = 0.5  # seconds: the quietest window of the speech


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(img)
    cv2.putText(img, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    return img


def _fit(img: np.ndarray, height: int = TILE) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def mouth_gap(lm: np.ndarray) -> float:
    """Inner-lip gap (13-14) over the outer eye corners' distance (33-263)."""
    return float(np.linalg.norm(lm[13, :2] - lm[14, :2]) / max(np.linalg.norm(lm[33, :2] - lm[263, :2]), 1e-6))


def quietest_frame(speech: Path, n: int) -> int:
    """The frame in the middle of the speech's quietest QUIET_S seconds (RMS) within the first n frames."""
    from a2pcli.audio import SAMPLE_RATE, load_audio

    audio = load_audio(speech, SAMPLE_RATE)[: int(n / bl.FPS * SAMPLE_RATE)].astype(np.float64)
    win = int(QUIET_S * SAMPLE_RATE)
    if len(audio) <= win:
        return n // 2
    energy = np.convolve(audio * audio, np.ones(win) / win, mode="valid")
    return int(min(n - 1, (int(np.argmin(energy)) + win // 2) / SAMPLE_RATE * bl.FPS))


def mouth_row(frames: list[np.ndarray], lms: list, speech: Path) -> np.ndarray:
    gaps = np.array([mouth_gap(lm) if lm is not None else -1.0 for lm in lms])
    wide: list[int] = []
    for i in np.argsort(-gaps):
        if len(wide) < WIDE_SHOWN and all(abs(int(i) - j) >= WIDE_APART for j in wide):
            wide.append(int(i))
    quiet = quietest_frame(speech, len(frames))
    pts = np.concatenate([lm[:, :2] for lm in lms if lm is not None])
    (x0, y0), (x1, y1) = np.percentile(pts, 1, 0), np.percentile(pts, 99, 0)
    pad = 0.15 * (x1 - x0)
    h, w = frames[0].shape[:2]
    box = (int(max(0, x0 - pad)), int(max(0, y0 - pad)), int(min(w, x1 + pad)), int(min(h, y1 + pad)))
    tiles = []
    for name, i in [*(("wide", i) for i in sorted(wide)), ("silence", quiet)]:
        crop = _fit(frames[i][box[1] : box[3], box[0] : box[2]])
        tiles.append(_label(crop, f"{name} {i / bl.FPS:.2f}s gap {max(gaps[i], 0):.2f}"))
    return np.concatenate(tiles, 1)


def blink_row(frames: list[np.ndarray], peaks: np.ndarray, lms: list) -> np.ndarray:
    openness = bl.openness_series(landmarks=lms)
    depth = bl.blink_depths(openness, peaks)
    h, w = frames[0].shape[:2]

    def eye_box(lm: np.ndarray) -> tuple[int, int, int, int]:  # both eyes of one frame, with a margin
        eyes = lm[[33, 133, 362, 263, 159, 386, 145, 374], :2]
        (x0, y0), (x1, y1) = eyes.min(0), eyes.max(0)
        pad_x, pad_y = 0.25 * (x1 - x0), 0.9 * (x1 - x0) / 2.5
        return int(max(0, x0 - pad_x)), int(max(0, y0 - pad_y)), int(min(w, x1 + pad_x)), int(min(h, y1 + pad_y))

    first = next(lm for lm in lms if lm is not None)
    tiles = []
    for p, d in list(zip(peaks, depth))[:BLINKS_SHOWN]:
        # one box per blink, where the eyes are two frames before its peak (the head moves between blinks)
        at = lms[int(np.clip(p + BLINK_OFFSETS[0], 0, len(frames) - 1))]
        box = eye_box(first if at is None else at)
        for k in BLINK_OFFSETS:
            i = int(np.clip(p + k, 0, len(frames) - 1))
            crop = _fit(frames[i][box[1]:box[3], box[0]:box[2]])
            tiles.append(_label(crop, f"{i / bl.FPS:.2f}s" + (f" depth {d:.2f}" if k == 0 else "")))
    if not tiles:
        box = eye_box(first)
        tiles = [_label(_fit(frames[0][box[1]:box[3], box[0]:box[2]]), "no blink in the clip")]
    return np.concatenate(tiles, 1)


def turn_row(portrait: np.ndarray, frames: list[np.ndarray], euler: np.ndarray) -> np.ndarray:
    picks = [("portrait", None), ("yaw min", int(np.argmin(euler[:, 0]))), ("yaw max", int(np.argmax(euler[:, 0]))),
             ("pitch min", int(np.argmin(euler[:, 1]))), ("pitch max", int(np.argmax(euler[:, 1])))]
    tiles = []
    for name, i in picks:
        img = portrait if i is None else frames[min(i, len(frames) - 1)]
        text = name if i is None else f"{name} {euler[i, 0]:+.0f}/{euler[i, 1]:+.0f} deg (frame {i})"
        tiles.append(_label(_fit(img), text))
    return np.concatenate(tiles, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="*", type=Path, help="PORTRAIT SPEECH pairs")
    ap.add_argument("--driving", type=Path, default=bg.MEDIA / "liveportrait_d3.mp4")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("sheets"))
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give PORTRAIT SPEECH pairs")
    import cv2

    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.pipeline.reenact import driving_motion

    pairs = list(zip(args.pairs[::2], args.pairs[1::2])) or list(DEFAULT_PAIRS)
    args.out.mkdir(parents=True, exist_ok=True)
    motion, _ = driving_motion(args.driving)
    euler = motion.euler - motion.euler[:1]
    with tempfile.TemporaryDirectory(prefix="a2p-look-") as td:
        tmp = Path(td)
        for portrait, speech in pairs:
            talk = tmp / f"{portrait.stem}__{speech.stem}.mp4"
            bl.render(portrait, speech, args.seconds, tmp, talk)
            peaks, _ = bl.scheduled_peaks(portrait, tmp / f"{speech.stem}.wav", args.seconds)
            frames = bl.read_video(talk)
            lms = bl.landmark_series(frames)
            mouths = mouth_row(frames, lms, tmp / f"{speech.stem}.wav")
            top = blink_row(frames, peaks, lms)
            turn = tmp / f"{portrait.stem}_turn.mp4"
            bg.render(portrait, args.driving, turn, bl.MAX_SIZE)
            image = load_portrait(portrait, PortraitOptions(max_size=bl.MAX_SIZE)).image
            bottom = turn_row(image, bg.read_video(turn), euler)
            rows = (mouths, top, bottom)
            width = max(r.shape[1] for r in rows)
            sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                                    for r in rows], 0)
            dest = args.out / f"look__{portrait.stem}__{speech.stem}.png"
            cv2.imwrite(str(dest), sheet[..., ::-1])
            print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
