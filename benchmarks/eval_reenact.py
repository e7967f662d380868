"""Self-reenactment quality: each talking clip's first frame, driven by the clip's own motion, against the
real frames, and against the baseline that simply repeats the first frame.

    python benchmarks/eval_reenact.py [--frames 100] [--limit K] [--max-side 512] [--out reports/reenact]

For every `corpus/train/*.mp4` (clips with no face in the first frame or where extraction fails are skipped,
with the reason): the first frame is written as a PNG and loaded with `load_portrait` without crop (long
side capped at --max-side; the real frames are resized identically, so real frame 0 == the portrait pixel for
pixel), the clip's motion is extracted with `extract_motion` and rendered with `render_frames` (region all),
and every frame after the first is compared with the real one: PSNR over the face region (the real frame's
landmark box enlarged by 10%, the same box for rendering and baseline). Per clip: mean PSNR of each and the
gain in dB; summary: the fraction of clips where the rendering beats the baseline and the mean gain.
The product spec's bar: better than the baseline on >= 90% of talking clips and >= 1 dB better on average.

--out PATH writes PATH.json and PATH.md (a .json/.md suffix is dropped) after every clip, so a long run can be
watched; without it the markdown and then the JSON go to stdout. Shared material: A2P_SHARED or ../shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality as q  # noqa: E402


def report_markdown(results: list[q.ReenactResult], skipped: dict[str, str], summary: dict, args) -> str:
    rows = [[r.clip, f"{r.source_size[0]}x{r.source_size[1]}", f"{r.size[0]}x{r.size[1]}", r.frames,
             r.psnr_render, r.psnr_baseline, r.gain_db, r.frames_render_better, r.psnr_render_full,
             r.psnr_baseline_full, r.head_motion_deg, r.mouth_range, r.filled_frames]
            for r in results]
    table = q.markdown_table(
        ["clip", "source", "compared", "frames", "PSNR render (face)", "PSNR baseline (face)", "gain dB",
         "frames better", "PSNR render (full)", "PSNR baseline (full)", "head motion deg", "mouth range",
         "no-face frames"], rows)
    s = summary
    lines = [
        f"## Self-reenactment, face-region PSNR ({args.frames} frames per clip, long side <= {args.max_side})",
        "",
        table,
        "",
        f"**Summary**: {s['clips']} clips evaluated, {s['skipped']} skipped; rendering beats the baseline on "
        f"{s['beats_baseline_fraction'] * 100:.1f}% of clips (bar 90%); mean gain {s['mean_gain_db']:.2f} dB "
        f"(bar 1 dB), median {s['median_gain_db']:.2f} dB; mean PSNR {s['mean_psnr_render']:.2f} dB rendered vs "
        f"{s['mean_psnr_baseline']:.2f} dB baseline. Bar {'met' if s['passes'] else 'NOT met'}.",
    ]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=q.CORPUS_TRAIN, help="folder of talking clips")
    ap.add_argument("--pattern", default="*.mp4", help="clip file pattern in --corpus")
    ap.add_argument("--frames", type=int, default=100, help="first N frames of each clip")
    ap.add_argument("--limit", type=int, default=None, help="first K clips (sorted by name)")
    ap.add_argument("--max-side", type=int, default=512, help="long side of the portrait and compared frames")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    ap.add_argument("--save-frames", type=Path, default=None,
                    help="folder for side-by-side PNGs (real | rendered | baseline) of a few frames per clip")
    args = ap.parse_args(argv)

    if not args.corpus.is_dir():
        print(f"corpus folder {args.corpus} not found (set A2P_SHARED to the shared folder)", file=sys.stderr)
        return 2
    clips = sorted(args.corpus.glob(args.pattern))[: args.limit]
    keep = tuple(sorted({args.frames // 3, 2 * args.frames // 3, args.frames - 1}))
    if args.save_frames:
        args.save_frames.mkdir(parents=True, exist_ok=True)
    results: list[q.ReenactResult] = []
    skipped: dict[str, str] = {}
    t0 = time.perf_counter()
    code = q.code_version()

    def emit(final: bool) -> None:
        summary = q.summarise_reenact(results, skipped)
        doc = {"benchmark": "self-reenactment face-region PSNR", "frames": args.frames, "max_side": args.max_side,
               "box_expand": q.BOX_EXPAND, "device": args.device, "code": code, "machine": platform.platform(),
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "elapsed_s": round(time.perf_counter() - t0, 1), "complete": final,
               "summary": summary, "clips": [r.record() for r in results], "skipped": skipped}
        md = report_markdown(results, skipped, summary, args) + f"\nCode: {code}; {len(clips)} clips, " \
            f"{time.perf_counter() - t0:.0f} s on {args.device}.\n"
        if args.out is None:
            if final:
                print(md)
                print(json.dumps(doc, indent=2))
            return
        base = args.out.with_suffix("") if args.out.suffix in (".json", ".md") else args.out
        base.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{base}.json").write_text(json.dumps(doc, indent=2) + "\n")
        Path(f"{base}.md").write_text(md)

    for k, clip in enumerate(clips):
        try:
            res, kept = q.reenact_clip(clip, frames=args.frames, max_side=args.max_side, device=args.device,
                                       batch=args.batch, keep_frames=keep if args.save_frames else ())
        except q.SkipClip as exc:
            skipped[clip.name] = str(exc)
            print(f"[{k + 1}/{len(clips)}] {clip.name}: skipped ({exc})", file=sys.stderr, flush=True)
            emit(False)
            continue
        results.append(res)
        if args.save_frames:
            from PIL import Image

            for i, im in kept.items():
                Image.fromarray(im).save(args.save_frames / f"{clip.stem}_{i:04d}.png")
        print(f"[{k + 1}/{len(clips)}] {clip.name}: render {res.psnr_render:.2f} dB, baseline "
              f"{res.psnr_baseline:.2f} dB, gain {res.gain_db:+.2f} dB ({res.seconds:.1f} s)", file=sys.stderr,
              flush=True)
        emit(False)
    emit(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
