"""The mouth in self-reenactment: each held-out talking clip's first frame is the portrait and the clip's own
motion drives it; over the frames where the real mouth opens clearly wider than the portrait's, a square crop
around the real mouth is compared, rendered against real.

    python benchmarks/eval_mouth.py [--clips NAME ...] [--poses DIR] [--label model] [--out reports/mouth]
    python benchmarks/eval_mouth.py --compare reports/drawn.json reports/model.json [--out reports/compare]

Per clip: SSIM (luma, Gaussian window 11, sigma 1.5) and PSNR (RGB) of the crops, the Laplacian variance of the
rendered crops over the real ones' (sharpness; 1 = as sharp as the real mouth), the mean luma of the rendered
mouth interior minus the real one's (inside the real inner lip line), and the same SSIM and PSNR for the
portrait's unmoved mouth (the first frame repeated), for scale, and for the rendered crop with the real interior
pasted in (the real pixels inside the real inner lip line grown by one pixel): what a perfect interior would score,
the ceiling of what any mouth model can add over another here. The crop: centred on the real outer lip line,
CROP_WIDTHS times the real mouth's width on a side. A frame counts when the real inner-lip gap exceeds the
portrait's by more than --open-margin face units (a mouth "clearly wider" than the portrait's).

It calls only the library pipeline (`load_portrait`, `motion_targets`, `render_frames`). The drawn mouth interior
that the model replaced was measured by an earlier version of this script on the a2p version before the model.
--compare reads two such runs and checks the product's bar: the second better than the first on at least 80 % of
the clips, and on average by at least 0.04 SSIM and 1.5 dB; its sharpness 0.7-1.3 on average.

Default clips: the held-out speakers of models/audio2motion's card (none of them trains the mouth model).
Shared material: A2P_SHARED or ../shared. Frames are read from the clip, landmarks from --poses (a2p
extract-pose output of the same file) or found again.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's a2p

import quality as q  # noqa: E402

HELD_OUT = (  # the held-out speakers' clips of models/audio2motion/README.md
    "OpenTalker__SadTalker__WDA_EdMarkey0_000.mp4", "smeetrs__deep_avsr__00001.mp4", "smeetrs__deep_avsr__00008.mp4",
    "smeetrs__deep_avsr__00024.mp4", "bytedance__LatentSync__demo2_video.mp4",
    "SkyworkAI__SkyReels-A1__driving_video_4.mp4", "Hangz-nju-cuhk__Talking-Face_PC-AVS__00067.mp4",
    "Hangz-nju-cuhk__Talking-Face_PC-AVS__00086.mp4", "Hangz-nju-cuhk__Talking-Face_PC-AVS__620900105.mp4",
    "OpenTalker__video-retalking__2.mp4",
)
CROP_WIDTHS = 1.5  # crop side in real mouth widths (outer lip corners)
OPEN_MARGIN = 0.03  # face units of inner-lip gap beyond the portrait's
BAR_SHARE, BAR_SSIM, BAR_PSNR, BAR_SHARP = 0.8, 0.04, 1.5, (0.7, 1.3)


def mouth_box(lm: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The square crop around the mouth of (478, 2+) landmarks: x0, y0, x1, y1, or None if it leaves the frame."""
    from a2pcli import facemesh as fm

    outer = lm[np.concatenate([fm.LIPS_OUTER_UPPER, fm.LIPS_OUTER_LOWER]), :2]
    width = float(np.linalg.norm(lm[fm.LIPS_OUTER_UPPER[0], :2] - lm[fm.LIPS_OUTER_UPPER[-1], :2]))
    side = max(16, int(round(CROP_WIDTHS * width)))
    cx, cy = outer.mean(0)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = shape[:2]
    if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
        return None
    return x0, y0, x0 + side, y0 + side


def inner_mask(lm: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    import cv2

    from a2pcli import facemesh as fm

    poly = np.concatenate([lm[fm.LIPS_INNER_UPPER, :2], lm[fm.LIPS_INNER_LOWER[::-1], :2]]) - box[:2]
    mask = np.zeros((box[3] - box[1], box[2] - box[0]), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 8).astype(np.int32)], 1, shift=3)
    return mask.astype(bool)


def real_interior(inner: np.ndarray) -> np.ndarray:
    """The inner-lip mask grown by one pixel: the real pixels pasted for the perfect-interior reference."""
    import cv2

    return cv2.dilate(inner.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def load_clip(video: Path, poses: list[Path], frames: int, max_side: int):
    """Real frames at the comparison size, the first one as written to disk, and the motion (sliced)."""
    from a2pcli.errors import A2PError
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.media import probe_video, stream_frames
    from a2pcli.motion import load_motion

    info = probe_video(video)
    size = q.portrait_size(info.width, info.height, max_side)
    real, first = [], None
    for i, f in zip(range(frames), stream_frames(info)):
        if i == 0:
            first = f.copy()
        real.append(q.resize_like_portrait(f, size))
    motion = None
    for folder in poses:
        if (folder / f"{video.stem}.pose").is_file():
            motion = load_motion(folder / f"{video.stem}.pose")
            break
    if motion is None:
        try:
            motion, _ = extract_motion(video, ExtractOptions(end=(len(real) + 0.5) / info.fps))
        except A2PError as exc:
            raise q.SkipClip(f"extract failed: {exc}") from exc
    if not bool(motion.valid[0]):
        raise q.SkipClip("no face in the first frame")
    n = min(len(real), len(motion))
    sx, sy = size[0] / info.width, size[1] / info.height
    return real[:n], first, motion.slice(0, n), np.array([sx, sy, (sx + sy) / 2], np.float32), size


def evaluate_clip(video: Path, poses: list[Path], frames: int, max_side: int, margin: float, device: str,
                  mouth_model: str | None, keep: Path | None) -> dict:
    from PIL import Image

    from a2pcli.headpose import canonical
    from a2pcli.mouth import lip_gap
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.pipeline.reenact import motion_targets
    from a2pcli.pipeline.renderers import render_frames
    from a2pcli.retarget import RetargetOptions

    t0 = time.perf_counter()
    real, first, motion, lm_scale, size = load_clip(video, poses, frames, max_side)
    with tempfile.TemporaryDirectory(prefix="a2p-mouth-") as tmp:
        png = Path(tmp) / "frame0.png"
        Image.fromarray(first).save(png)
        portrait = load_portrait(png, PortraitOptions(crop=False, max_size=max_side))
    if not np.array_equal(portrait.image, real[0]):
        raise RuntimeError("real frame 0 and the portrait differ: the comparison would be misaligned")
    gap = lip_gap(canonical(motion.landmarks, motion.rotation, motion.translation, motion.scale))
    usable = np.asarray(motion.valid, bool) & ~np.asarray(motion.filled, bool)
    opened = usable & (gap > float(lip_gap(portrait.face.canon[None])[0]) + margin)
    opened[0] = False
    tgt = motion_targets(portrait, motion, RetargetOptions(region="all")).slice(0, len(real))
    lm_real = motion.landmarks * lm_scale
    rows = {k: [] for k in ("ssim", "psnr", "ssim_still", "psnr_still", "lap", "lap_real", "interior_luma",
                            "ssim_real_interior", "psnr_real_interior")}
    picked = []
    i = 0
    for chunk in render_frames(portrait, tgt, device=device, mouth_model=mouth_model):
        for out in chunk:
            box = mouth_box(lm_real[i], out.shape) if opened[i] else None
            if box is not None:
                x0, y0, x1, y1 = box
                r, g, still = out[y0:y1, x0:x1], real[i][y0:y1, x0:x1], portrait.image[y0:y1, x0:x1]
                rows["ssim"].append(q.ssim(r, g))
                rows["psnr"].append(q.psnr(r, g))
                rows["ssim_still"].append(q.ssim(still, g))
                rows["psnr_still"].append(q.psnr(still, g))
                rows["lap"].append(q.laplacian_variance(r))
                rows["lap_real"].append(q.laplacian_variance(g))
                m = inner_mask(lm_real[i], box)
                if m.any():
                    rows["interior_luma"].append(float(q.luma(r)[m].mean() - q.luma(g)[m].mean()))
                pasted = r.copy()
                grown = real_interior(m)
                pasted[grown] = g[grown]
                rows["ssim_real_interior"].append(q.ssim(pasted, g))
                rows["psnr_real_interior"].append(q.psnr(pasted, g))
                picked.append((i, np.concatenate([g, r, still], 1)))
            i += 1
    if not rows["ssim"]:
        raise q.SkipClip("no frame where the real mouth opens wider than the portrait's")
    if keep is not None:
        _save_strip(keep / f"{video.stem}.png", picked)
    mean = {k: float(np.mean(v)) if v else float("nan") for k, v in rows.items()}
    return {"clip": video.name, "size": list(size), "frames": len(real), "compared": len(rows["ssim"]),
            "ssim": mean["ssim"], "psnr": mean["psnr"], "ssim_still": mean["ssim_still"], "psnr_still": mean["psnr_still"],
            "sharpness": mean["lap"] / max(mean["lap_real"], 1e-9), "interior_luma_diff": mean["interior_luma"],
            "ssim_real_interior": mean["ssim_real_interior"], "psnr_real_interior": mean["psnr_real_interior"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _save_strip(path: Path, picked: list) -> None:
    """Up to 6 frames, evenly spread: real | rendered | portrait unmoved, each crop scaled to 128 px tall."""
    import cv2

    if not picked:
        return
    sel = [picked[int(k)] for k in np.linspace(0, len(picked) - 1, min(6, len(picked)))]
    tiles = []
    for i, im in sel:
        h = im.shape[0]
        im = cv2.resize(im, (int(round(im.shape[1] * 128 / h)), 128), interpolation=cv2.INTER_CUBIC)
        cv2.putText(im, str(i), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(im)
    w = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, w - t.shape[1]), (0, 0))) for t in tiles]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(tiles, 0)[..., ::-1])


def compare(base: dict, new: dict) -> tuple[str, dict]:
    """Per-clip table of two runs and the bar."""
    a = {r["clip"]: r for r in base["clips"]}
    b = {r["clip"]: r for r in new["clips"]}
    clips = [c for c in a if c in b]
    rows, d_ssim, d_psnr, better = [], [], [], []
    for c in clips:
        ds, dp = b[c]["ssim"] - a[c]["ssim"], b[c]["psnr"] - a[c]["psnr"]
        d_ssim.append(ds)
        d_psnr.append(dp)
        better.append(ds > 0 and dp > 0)
        rows.append([c, b[c]["compared"], a[c]["ssim"], b[c]["ssim"], a[c]["psnr"], b[c]["psnr"], a[c]["ssim_still"],
                     a[c]["psnr_still"], a[c]["sharpness"], b[c]["sharpness"], a[c]["interior_luma_diff"],
                     b[c]["interior_luma_diff"]])
    la, lb = base.get("label", "before"), new.get("label", "after")
    table = q.markdown_table(["clip", "frames", f"SSIM {la}", f"SSIM {lb}", f"PSNR {la}", f"PSNR {lb}",
                              "SSIM unmoved", "PSNR unmoved", f"sharpness {la}", f"sharpness {lb}",
                              f"interior luma {la}", f"interior luma {lb}"], rows)
    sharp = float(np.mean([b[c]["sharpness"] for c in clips])) if clips else float("nan")
    s = {"clips": len(clips), "better_share": float(np.mean(better)) if clips else float("nan"),
         "mean_ssim_gain": float(np.mean(d_ssim)) if clips else float("nan"),
         "mean_psnr_gain_db": float(np.mean(d_psnr)) if clips else float("nan"),
         "mean_ssim": {la: float(np.mean([a[c]["ssim"] for c in clips])), lb: float(np.mean([b[c]["ssim"] for c in clips]))},
         "mean_psnr": {la: float(np.mean([a[c]["psnr"] for c in clips])), lb: float(np.mean([b[c]["psnr"] for c in clips]))},
         "mean_sharpness": sharp}
    s["passes"] = bool(s["better_share"] >= BAR_SHARE and s["mean_ssim_gain"] >= BAR_SSIM
                       and s["mean_psnr_gain_db"] >= BAR_PSNR and BAR_SHARP[0] <= sharp <= BAR_SHARP[1])
    md = (f"## Mouth crops in self-reenactment: {la} vs {lb}\n\n{table}\n\n**Summary**: {lb} better (SSIM and PSNR) on "
          f"{s['better_share'] * 100:.0f}% of {len(clips)} clips (bar {BAR_SHARE * 100:.0f}%); mean gain "
          f"{s['mean_ssim_gain']:+.3f} SSIM (bar {BAR_SSIM}) and {s['mean_psnr_gain_db']:+.2f} dB (bar {BAR_PSNR}); "
          f"sharpness x{sharp:.2f} of the real crops (bar {BAR_SHARP[0]}-{BAR_SHARP[1]}). "
          f"Bar {'met' if s['passes'] else 'NOT met'}.\n")
    return md, s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=q.CORPUS_TRAIN)
    ap.add_argument("--clips", nargs="*", default=list(HELD_OUT), help="clip file names in --corpus")
    ap.add_argument("--poses", type=Path, action="append", default=[], help="folder of .pose files of the clips")
    ap.add_argument("--frames", type=int, default=200, help="first N frames of each clip")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--open-margin", type=float, default=OPEN_MARGIN)
    ap.add_argument("--mouth-model", default=None, help="a mouth model folder (default: the shipped one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--label", default="model")
    ap.add_argument("--save-crops", type=Path, default=None, help="folder for real | rendered | unmoved strips")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)

    if args.compare:
        md, s = compare(*(json.loads(p.read_text()) for p in args.compare))
        doc = {"benchmark": "mouth crops, comparison", "runs": [str(p) for p in args.compare], "summary": s}
        _write(args.out, md, doc)
        return 0
    if not args.corpus.is_dir():
        print(f"corpus folder {args.corpus} not found (set A2P_SHARED to the shared folder)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results, skipped = [], {}
    for k, name in enumerate(args.clips):
        try:
            r = evaluate_clip(args.corpus / name, args.poses, args.frames, args.max_side, args.open_margin,
                              args.device, args.mouth_model, args.save_crops)
        except q.SkipClip as exc:
            skipped[name] = str(exc)
            print(f"[{k + 1}/{len(args.clips)}] {name}: skipped ({exc})", file=sys.stderr, flush=True)
            continue
        results.append(r)
        print(f"[{k + 1}/{len(args.clips)}] {name}: {r['compared']} frames, SSIM {r['ssim']:.3f} PSNR {r['psnr']:.2f} "
              f"(unmoved {r['ssim_still']:.3f} / {r['psnr_still']:.2f}), sharpness x{r['sharpness']:.2f}, "
              f"interior luma {r['interior_luma_diff']:+.1f} ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    doc = {"benchmark": "mouth crops in self-reenactment", "label": args.label, "frames": args.frames,
           "max_side": args.max_side, "open_margin": args.open_margin, "crop_widths": CROP_WIDTHS,
           "mouth_model": args.mouth_model, "code": q.code_version(), "machine": platform.platform(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "elapsed_s": round(time.perf_counter() - t0, 1),
           "clips": results, "skipped": skipped}
    rows = [[r["clip"], r["compared"], r["ssim"], r["psnr"], r["ssim_still"], r["psnr_still"],
             r["ssim_real_interior"], r["psnr_real_interior"], r["sharpness"], r["interior_luma_diff"]] for r in results]
    md = f"## Mouth crops ({args.label})\n\n" + q.markdown_table(
        ["clip", "frames", "SSIM", "PSNR", "SSIM unmoved", "PSNR unmoved", "SSIM real interior", "PSNR real interior",
         "sharpness", "interior luma diff"], rows) + "\n"
    _write(args.out, md, doc)
    return 0


def _write(out: Path | None, md: str, doc: dict) -> None:
    if out is None:
        print(md)
        print(json.dumps(doc, indent=2))
        return
    base = out.with_suffix("") if out.suffix in (".json", ".md") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{base}.json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(f"{base}.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
