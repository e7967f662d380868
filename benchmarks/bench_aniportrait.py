"""The diffusion renderer's speed at full size: AniPortrait's architecture with random weights (they time
the same as the released ones), model loaded, 512x512, 25 steps, CFG 3.5, 16-frame windows, overlap 4.

    python benchmarks/bench_aniportrait.py [--frames 90] [--steps 25] [--dtype fp16] [--size 512]
                                           [--compat] [--low-vram] [--compile] [--acc 1,2] [--profile]
                                           [--window-batch 1] [--attention auto] [--no-park]
                                           [--warm-steps 2] [--repeat 1] [--sweep] [--out FILE.json]
    python benchmarks/bench_aniportrait.py --tiny --device cpu --size 64 --frames 20 --steps 2   # harness check

Pose frames come from a real motion (liveportrait_d3.mp4's landmarks, or --pose FILE.pose), drawn the
way AniPortrait draws them; the reference image is examples/astronaut.jpg. A warm-up render of the same
frames with --warm-steps steps comes first (it pays the first kernels, and with --compile the
compilation, for the shapes of the timed runs). Prints one JSON object: time per stage (reference pass,
denoising loop, VAE decode), seconds per window-step, frames/s, peak VRAM of each run against a2p's
estimate, and the wall-clock span of each run's window loop (for GPU utilisation samples).
`--sweep` also times a few uncompiled steps for each value of the comma lists --attention (at the first
--window-batch) and --window-batch (at the first --attention): seconds per window-step and peak VRAM.
Needs a CUDA GPU for full-size figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("A2P_SHARED", ROOT.parent / "shared"))

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD_VAE_FT_MSE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_VIT_L14 = {  # sd-image-variations-diffusers image_encoder
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}


def random_state(keys: dict, device, dtype, seed: int = 0) -> dict:
    """Random tensors for a {key: (shape, dtype)} table (norm weights near 1, BN variances positive)."""
    import torch

    from a2pcli.aniportrait.recipe import rule_for, sinusoid

    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for k, (shape, dt) in keys.items():
        rule = rule_for(k)
        if "int" in dt:
            out[k] = torch.zeros(shape, dtype=torch.int64, device=device)
        elif rule == "keep":
            out[k] = torch.from_numpy(sinusoid(shape[1], shape[2])).to(device=device, dtype=dtype)
        else:
            t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.02
            if rule == "norm_weight":
                t += 1
            elif rule == "bn_running_var":
                t = t.abs() + 0.5
            out[k] = t.to(dtype)
    return out


def build_tiny(device: str, dtype):
    """The golden fixtures' tiny networks (CPU checks of this script)."""
    from a2pcli.aniportrait.recipe import tiny_state_dicts
    from a2pcli.aniportrait.render import INFERENCE_V2_UNET_KWARGS
    from a2pcli.aniportrait.sampler import build_models

    fixtures = SHARED / "fixtures" / "aniportrait"
    configs = json.loads((fixtures / "configs.json").read_text())
    configs["unet3d_additional_kwargs"] = INFERENCE_V2_UNET_KWARGS
    seed = json.loads((fixtures / "weights_manifest.json").read_text())["seed"]
    return build_models(configs, tiny_state_dicts(fixtures, seed), dtype=dtype, device=device)


def build(device: str, dtype) -> tuple:
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from a2pcli.aniportrait.render import INFERENCE_V2_UNET_KWARGS
    from a2pcli.aniportrait.sampler import build_models
    from a2pcli.aniportrait.weights import key_table

    table = key_table()
    weights = {name: random_state(table[name], device, dtype, i) for i, name in enumerate(
        ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "pose_guider.pth"))}
    with torch.device(device):
        weights["vae"] = {k: v.to(dtype) for k, v in AutoencoderKL(**SD_VAE_FT_MSE).state_dict().items()}
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14))
        weights["image_encoder"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in clip.state_dict().items()}
        del clip
    configs = {"unet_2d_and_3d_base": SD15_UNET, "unet3d_additional_kwargs": INFERENCE_V2_UNET_KWARGS,
               "pose_guider": {"noise_latent_channels": 320, "use_ca": True}, "vae_AutoencoderKL": SD_VAE_FT_MSE,
               "clip_CLIPVisionConfig": CLIP_VIT_L14}
    return build_models(configs, weights, dtype=dtype, device=device)


def pose_landmarks(n: int, pose: Path | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(n, 478, 3) landmarks of a real motion (looped to n frames) and the (W, H) of its frames."""
    from a2pcli.motion import load_motion

    path = pose
    if path is None:
        for cand in (ROOT / ".devrun" / "d3.pose", SHARED / "media" / "liveportrait_d3.pose"):
            if cand.exists():
                path = cand
                break
    if path is None:
        raise SystemExit("give --pose FILE.pose (a2p extract-pose ../shared/media/liveportrait_d3.mp4)")
    m = load_motion(path)
    return m.landmarks[np.arange(n) % len(m.landmarks)], tuple(m.frame_size)


def pose_frames(n: int, size: int, pose: Path | None) -> list[np.ndarray]:
    from a2pcli.aniportrait.render import landmark_images

    lm, frame_size = pose_landmarks(n, pose)
    return list(landmark_images(lm, frame_size, (size, size)))


def _lists(text: str, cast=str) -> list:
    return [cast(v) for v in str(text).split(",") if v != ""]


def timed_render(sampler, models, ref, poses, size: int, steps: int, frames: int, acc: int, sync, cuda: bool,
                 decode: bool = True) -> dict:
    """One render (sampling, VAE decode, 8-bit frames), timed stage by stage."""
    import torch

    from a2pcli.aniportrait.sampler import video_to_frames
    from a2pcli.aniportrait.vae import decode_latents
    from a2pcli.interpolate import fill, key_frames

    keys = key_frames(frames, acc)
    use = [poses[i] for i in keys]
    marks = {}

    def progress(ev):
        if ev.stage == "denoise" and ev.step == 1 and ev.window == 1:
            sync()
            marks["first_window"] = time.perf_counter()
            marks["loop_wall_start"] = time.time()
        if ev.stage == "denoise" and ev.step == 1 and ev.window == ev.windows:
            sync()
            marks["first_step"] = time.perf_counter()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t1 = time.perf_counter()
    models.unpark()  # (the sampler does it first thing; timed apart here)
    sync()
    t_unpark = time.perf_counter() - t1
    res = sampler(ref, use, width=size, height=size, steps=steps, progress=progress, decode=False)
    sync()
    t2 = time.perf_counter()
    loop_wall_end = time.time()
    n_ws = len(res.windows) * steps
    out = {
        "acc": acc,
        "steps": steps,
        "diffused_frames": len(keys),
        "windows": len(res.windows),
        "sample_s": round(t2 - t1, 2),
        "unpark_s": round(t_unpark, 3),
        "before_first_window_s": round(marks.get("first_window", t1) - t1, 3),
        "first_step_s": round(marks.get("first_step", t1) - t1, 3),
        "per_window_step_s": round((t2 - marks.get("first_step", t1)) / max(1, n_ws - len(res.windows)), 4),
        "loop_wall": [round(marks.get("loop_wall_start", 0.0), 3), round(loop_wall_end, 3)],
    }
    if decode:
        video = decode_latents(models.vae, res.latents, batch=sampler.config.vae_decode_batch)
        sync()
        t3 = time.perf_counter()
        frames_u8 = list(fill(keys, video_to_frames(video))) if len(keys) < frames else video_to_frames(video)
        t4 = time.perf_counter()
        assert len(frames_u8) == frames
        out.update(total_s=round(t4 - t1, 2), decode_s=round(t3 - t2, 2),
                   to_uint8_and_interpolate_s=round(t4 - t3, 2), frames_per_s=round(frames / (t4 - t1), 2))
        out["frames_u8"] = np.stack(frames_u8)
        del video, frames_u8
    if cuda:
        out["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    out["latents"] = res.latents
    return out


def distance(frames: np.ndarray, exact: np.ndarray) -> dict:
    """How far a render's 8-bit frames are from the exact render's: PSNR (dB) and mean absolute
    difference in 8-bit levels over all frames."""
    d = frames.astype(np.float64) - exact.astype(np.float64)
    mse = float(np.mean(d * d))
    return {"psnr_db": round(10 * np.log10(255.0 ** 2 / mse), 2) if mse > 0 else None,
            "mean_abs_levels": round(float(np.mean(np.abs(d))), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--compat", action="store_true", help="AniPortrait's own loop, without the exact savings")
    ap.add_argument("--low-vram", action="store_true",
                    help="guidance halves one after the other, idle models on the CPU")
    ap.add_argument("--channels-last", action="store_true", help="NHWC weights for the convolution-heavy networks")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser (the warm-up pays the compile)")
    ap.add_argument("--window-batch", default="", help="context windows per denoiser call (default: the renderer's; "
                                                       "a comma list with --sweep)")
    ap.add_argument("--attention", default="auto", help="SDPA backend first: auto, cudnn, flash, efficient, math "
                                                        "(comma list with --sweep)")
    ap.add_argument("--no-park", action="store_true", help="keep CLIP and the reference UNet on the GPU while sampling")
    ap.add_argument("--decode-batch", type=int, default=None, help="frames per VAE decode call")
    ap.add_argument("--acc", default="1", help="comma list: diffuse every N-th frame, interpolate the rest (1: all)")
    ap.add_argument("--schedulers", default="", help="comma list of SCHEDULER:STEPS renders timed after the exact one "
                                                     "(e.g. dpmpp:10,unipc:10), with their distance from it")
    ap.add_argument("--profile", action="store_true", help="also profile one step of one window: top GPU kernels")
    ap.add_argument("--pose", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the fixtures' tiny networks (checks this script on a CPU)")
    ap.add_argument("--warm-steps", type=int, default=2,
                    help="steps of the warm-up render of the same frames (0: none)")
    ap.add_argument("--repeat", type=int, default=1, help="timed renders with the first --acc value")
    ap.add_argument("--sweep", action="store_true", help="seconds per window-step for each --attention (at the first "
                                                         "--window-batch) and each --window-batch (first --attention)")
    ap.add_argument("--sweep-frames", type=int, default=52)
    ap.add_argument("--sweep-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from a2pcli.aniportrait.config import AniPortraitConfig
    from a2pcli.aniportrait.render import torch_dtype, vram_estimate
    from a2pcli.aniportrait.runtime import prefer_attention, speed_settings
    from a2pcli.aniportrait.sampler import Pose2VideoSampler

    dtype = torch_dtype(args.dtype)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    models = build_tiny(args.device, dtype) if args.tiny else build(args.device, dtype)
    sync()
    t_build = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        weights_gb = torch.cuda.memory_allocated() / 1e9
    poses = pose_frames(max(args.frames, args.sweep_frames if args.sweep else 0), args.size, args.pose)
    ref = Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB")
    cfg = AniPortraitConfig.compat() if args.compat else AniPortraitConfig()
    batches, attentions = _lists(args.window_batch, int) or [cfg.window_batch], _lists(args.attention)
    cfg = cfg.replace(width=args.size, height=args.size, steps=args.steps, guidance_scale=args.cfg, dtype=args.dtype,
                      sequential_cfg=args.low_vram, offload=args.low_vram, window_batch=batches[0],
                      park_reference=not args.no_park and not args.compat)
    if args.decode_batch:
        cfg = cfg.replace(vae_decode_batch=args.decode_batch)
    speed_settings(models, channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark,
                   attention=attentions[0])
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    try:
        import diffusers

        out["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    out["settings"] = {"frames": args.frames, "size": args.size, "steps": args.steps, "cfg": args.cfg,
                       "dtype": args.dtype, "compat_loop": args.compat, "low_vram": args.low_vram,
                       "channels_last": args.channels_last, "cudnn_benchmark": args.cudnn_benchmark,
                       "compile": args.compile, "window_batch": cfg.window_batch, "attention": attentions[0],
                       "park_reference": cfg.park_reference, "decode_batch": cfg.vae_decode_batch,
                       "context": [cfg.context_frames, cfg.context_overlap], "tiny": args.tiny}
    out["build_s"] = round(t_build, 1)

    sweep = []
    if args.sweep:  # before any compilation: uncompiled seconds per window-step of each combination
        combos = [(a, batches[0]) for a in attentions] + [(attentions[0], wb) for wb in batches[1:]]
        for attention, wb in combos:
            if cuda:
                prefer_attention(attention)
            s = Pose2VideoSampler(models, cfg.replace(window_batch=wb))
            timed_render(s, models, ref, poses[:args.sweep_frames], args.size, 1, args.sweep_frames, 1, sync,
                         cuda, decode=False)  # warm-up of this shape
            r = timed_render(s, models, ref, poses[:args.sweep_frames], args.size, args.sweep_steps,
                             args.sweep_frames, 1, sync, cuda, decode=False)
            r.pop("latents")
            sweep.append({"attention": attention, "window_batch": wb, **{k: r[k] for k in (
                "per_window_step_s", "windows", "sample_s", "peak_vram_gb") if k in r}})
            print(json.dumps(sweep[-1]), file=sys.stderr, flush=True)
        if cuda:
            prefer_attention(attentions[0])
        out["sweep"] = sweep

    if args.compile:
        from a2pcli.aniportrait.runtime import compile_cache_state, compile_denoiser

        out["compile_cache"] = {k: v for k, v in compile_cache_state().items() if k != "renders"}
        compile_denoiser(models)
    sampler = Pose2VideoSampler(models, cfg)
    if args.warm_steps > 0:
        sync()
        tw = time.perf_counter()
        timed_render(sampler, models, ref, poses[:args.frames], args.size, args.warm_steps, args.frames, 1, sync, cuda,
                     decode=True)
        out["warmup_s"] = round(time.perf_counter() - tw, 2)
        print(json.dumps({"warmup_s": out["warmup_s"]}), file=sys.stderr, flush=True)
    runs = []
    accs = [int(a) for a in str(args.acc).split(",")]
    exact = None  # the first exact render's frames: the others' distances are measured from them
    plan = [(accs[0], "ddim", args.steps)] * args.repeat + [(a, "ddim", args.steps) for a in accs[1:]]
    plan += [(1, v.split(":")[0], int(v.split(":")[1])) for v in _lists(args.schedulers)]
    for acc, scheduler, steps in plan:
        use = sampler if scheduler == "ddim" else Pose2VideoSampler(models, cfg.replace(scheduler=scheduler))
        run = timed_render(use, models, ref, poses[:args.frames], args.size, steps, args.frames, acc, sync, cuda)
        run.pop("latents")
        frames_u8 = run.pop("frames_u8")
        run["scheduler"] = scheduler
        exact_run = acc == 1 and scheduler == "ddim" and steps == args.steps
        if exact is None and exact_run:
            exact = frames_u8
        elif exact is not None:
            run["distance_from_exact"] = distance(frames_u8, exact)
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
        del frames_u8
    out["runs"] = runs
    if args.compile and cuda:
        from a2pcli.aniportrait.runtime import mark_compile_warm

        mark_compile_warm({"size": [args.size, args.size], "window_frames": cfg.context_frames,
                           "window_batch": cfg.window_batch, "dtype": args.dtype})
    if args.profile and cuda:
        from torch.profiler import ProfilerActivity, profile

        # one step of one denoiser call: `window_batch` windows (frames that give exactly that many)
        wb = cfg.window_batch
        one = poses[:cfg.context_frames if wb == 1 else (cfg.context_frames - cfg.context_overlap) * wb]
        sampler(ref, one, width=args.size, height=args.size, steps=1, decode=False)
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sampler(ref, one, width=args.size, height=args.size, steps=1, decode=False)
            sync()
        ev = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in ev)
        ev.sort(key=lambda e: -e.self_device_time_total)
        out["profile_one_call"] = {"windows": wb,
            "gpu_ms_total": round(total / 1e3, 1),
            "top": [[e.key[:90], round(e.self_device_time_total / 1e3, 2), e.count] for e in ev[:40]]}
    if cuda:
        peak = max([r.get("peak_vram_gb", 0) for r in runs] or [0])
        out["vram"] = {"weights_gb": round(weights_gb, 2), "peak_gb": peak,
                       "estimate_gb": round(vram_estimate(args.size, args.size, args.dtype, args.low_vram) / 1e9, 2)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
