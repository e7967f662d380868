"""Landmark fidelity: does the rendered face do what it was told? Several portraits are driven by one video;
MediaPipe re-detects every rendered frame, and the re-detected mouth opening, yaw and pitch are correlated
with the commanded ones.

    python benchmarks/eval_fidelity.py [--driver liveportrait_d3.mp4] [--size 512] [--frames N] [--out reports/fidelity]

Commanded: the driving motion's mouth opening (`mouth_opening` of its landmarks) and yaw/pitch (`motion.euler`,
relative to its frame 0); also the retargeted target landmarks' mouth opening and the target rotation (what
the renderer was actually asked to draw on this portrait's face). Re-detected: `FaceMeshDetector(video=True)`
on every rendered frame, head pose by `fit_pose` against the reference face, relative to rendered frame 0.
Pearson r per portrait; the gain column is the least-squares slope (1.0: the full amplitude is reproduced).
The product spec's bar: r >= 0.9 for mouth opening, yaw and pitch, for every portrait.

--out PATH writes PATH.json and PATH.md (a .json/.md suffix is dropped); without it both go to stdout.
Shared material: A2P_SHARED or ../shared.
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

DEFAULT_PORTRAITS = ("liveportrait_s9.jpg", "sadtalker_happy.png", "liveportrait_s12.jpg", "sadtalker_art_0.png")


def report_markdown(results: list[q.FidelityResult], args, driver: str, ranges: dict) -> str:
    rows = []
    for r in results:
        c, g = r.corr, r.gains
        rows.append([r.portrait, f"{r.redetected}/{r.frames}", c["mouth_vs_driver"], c["mouth_vs_target"],
                     g["mouth_vs_target"], c["yaw"], g["yaw"], c["pitch"], g["pitch"], c["yaw_vs_target"],
                     c["pitch_vs_target"], "yes" if q.fidelity_passes(r) else "**no**"])
    table = q.markdown_table(
        ["portrait", "re-detected", "r mouth (driver)", "r mouth (target)", "gain mouth (target)", "r yaw",
         "gain yaw", "r pitch", "gain pitch", "r yaw (target)", "r pitch (target)", "bar >= 0.9"], rows)
    return "\n".join([
        f"## Landmark fidelity: {driver} driving each portrait (crop, {args.size} px)",
        "",
        f"Commanded ranges: yaw {ranges['yaw_deg']:.1f} deg, pitch {ranges['pitch_deg']:.1f} deg, "
        f"driver mouth opening {ranges['mouth_driver']:.3f} (inner-lip gap / eye-corner distance).",
        "",
        table,
        "",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--driver", type=Path, default=q.MEDIA / "liveportrait_d3.mp4")
    ap.add_argument("--portraits", nargs="+", type=Path, default=[q.MEDIA / p for p in DEFAULT_PORTRAITS])
    ap.add_argument("--size", type=int, default=512, help="crop size of the portraits")
    ap.add_argument("--frames", type=int, default=None, help="first N driving frames (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    ap.add_argument("--save-frames", type=Path, default=None, help="folder for a few rendered frames per portrait")
    args = ap.parse_args(argv)

    missing = [p for p in [args.driver, *args.portraits] if not p.exists()]
    if missing:
        print(f"not found: {', '.join(map(str, missing))} (set A2P_SHARED to the shared folder)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    motion = q.driving(args.driver, args.frames)
    t_extract = time.perf_counter() - t0
    print(f"driver {args.driver.name}: {len(motion)} frames ({t_extract:.1f} s)", file=sys.stderr, flush=True)
    keep = (0, len(motion) // 4, len(motion) // 2, 3 * len(motion) // 4)
    results = []
    for p in args.portraits:
        res, kept = q.fidelity(p, motion, size=args.size, device=args.device, batch=args.batch,
                               keep_frames=keep if args.save_frames else ())
        results.append(res)
        c = res.corr
        print(f"{p.name}: mouth r={q.fmt(c['mouth_vs_driver'], 3)} (target {q.fmt(c['mouth_vs_target'], 3)}), "
              f"yaw r={q.fmt(c['yaw'], 3)}, pitch r={q.fmt(c['pitch'], 3)}, re-detected {res.redetected}/{res.frames} "
              f"({res.seconds:.1f} s)", file=sys.stderr, flush=True)
        if args.save_frames:
            from PIL import Image

            args.save_frames.mkdir(parents=True, exist_ok=True)
            for i, im in kept.items():
                Image.fromarray(im).save(args.save_frames / f"{p.stem}_{i:04d}.png")

    ranges = results[0].ranges if results else {}
    doc = {"benchmark": "landmark fidelity", "driver": args.driver.name, "frames": len(motion), "size": args.size,
           "bar": q.FIDELITY_BAR, "bar_keys": list(q.FIDELITY_KEYS), "device": args.device,
           "code": q.code_version(), "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "elapsed_s": round(time.perf_counter() - t0, 1), "extract_s": round(t_extract, 1),
           "passes": all(q.fidelity_passes(r) for r in results), "portraits": [r.record() for r in results]}
    md = report_markdown(results, args, args.driver.name, ranges) + \
        f"\nCode: {doc['code']}; {doc['elapsed_s']} s on {args.device}.\n"
    if args.out is None:
        print(md)
        print(json.dumps(doc, indent=2))
    else:
        base = args.out.with_suffix("") if args.out.suffix in (".json", ".md") else args.out
        base.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{base}.json").write_text(json.dumps(doc, indent=2) + "\n")
        Path(f"{base}.md").write_text(md)
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
