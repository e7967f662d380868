"""The diffusion renderer's speed at full size: AniPortrait's architecture with random weights (they time
the same as the released ones), model loaded, 512x512, 25 steps, CFG 3.5, 16-frame windows, overlap 4.

    python benchmarks/bench_aniportrait.py [--frames 90] [--steps 25] [--dtype fp16] [--size 512]
                                           [--compat] [--low-vram] [--compile] [--acc 1,2] [--profile]

Pose frames come from a real motion (liveportrait_d3.mp4's landmarks, or --pose FILE.pose), drawn the
way AniPortrait draws them; the reference image is examples/astronaut.jpg. Prints one JSON object:
time per stage (CLIP, reference pass, denoising loop, VAE decode), seconds per window-step, frames/s,
peak VRAM against a2p's estimate. Needs a CUDA GPU for full-size figures (it runs anywhere, slowly).
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


def pose_frames(n: int, size: int, pose: Path | None) -> list[np.ndarray]:
    from a2pcli.aniportrait.render import landmark_images
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
    lm = m.landmarks[np.arange(n) % len(m.landmarks)]
    return list(landmark_images(lm, tuple(m.frame_size), (size, size)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--compat", action="store_true", help="AniPortrait's own loop, without the exact savings")
    ap.add_argument("--low-vram", action="store_true", help="guidance halves one after the other, idle models on the CPU")
    ap.add_argument("--channels-last", action="store_true", help="NHWC weights for the convolution-heavy networks")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser (first run pays the compile)")
    ap.add_argument("--acc", default="1", help="comma list: diffuse every N-th frame, interpolate the rest (1: all)")
    ap.add_argument("--profile", action="store_true", help="also profile one step of one window: top GPU kernels")
    ap.add_argument("--pose", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=1, help="time the whole render this many times (first = warm-up)")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from a2pcli.aniportrait.config import AniPortraitConfig
    from a2pcli.aniportrait.render import torch_dtype, vram_estimate
    from a2pcli.aniportrait.sampler import Pose2VideoSampler
    from a2pcli.aniportrait.vae import decode_latents

    dtype = torch_dtype(args.dtype)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    models = build(args.device, dtype)
    sync()
    t_build = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        weights_gb = torch.cuda.memory_allocated() / 1e9
    poses = pose_frames(args.frames, args.size, args.pose)
    ref = Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB")
    cfg = AniPortraitConfig.compat() if args.compat else AniPortraitConfig()
    cfg = cfg.replace(width=args.size, height=args.size, steps=args.steps, guidance_scale=args.cfg, dtype=args.dtype,
                      sequential_cfg=args.low_vram, offload=args.low_vram)
    from a2pcli.aniportrait.runtime import speed_settings

    speed_settings(models, channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark)
    if args.compile:
        from a2pcli.aniportrait.runtime import compile_denoiser

        compile_denoiser(models)
    sampler = Pose2VideoSampler(models, cfg)
    from a2pcli.aniportrait.sampler import video_to_frames
    from a2pcli.interpolate import fill, key_frames

    runs = []
    accs = [int(a) for a in str(args.acc).split(",")]
    # the first --acc value is timed --repeat times (the first run warms kernels up), the others once
    for r, acc in [(r, accs[0]) for r in range(args.repeat)] + [(0, a) for a in accs[1:]]:
        keys = key_frames(args.frames, acc)
        use = [poses[i] for i in keys]
        marks = {}

        def progress(ev):
            if ev.stage == "denoise" and ev.step == 1 and ev.window == 1:
                sync()
                marks["first_window"] = time.perf_counter()
            if ev.stage == "denoise" and ev.step == 1 and ev.window == ev.windows:
                sync()
                marks["first_step"] = time.perf_counter()

        sync()
        t1 = time.perf_counter()
        res = sampler(ref, use, width=args.size, height=args.size, progress=progress, decode=False)
        sync()
        t2 = time.perf_counter()
        video = decode_latents(models.vae, res.latents, batch=cfg.vae_decode_batch)
        sync()
        t3 = time.perf_counter()
        frames = list(fill(keys, video_to_frames(video))) if len(keys) < args.frames else video_to_frames(video)
        t4 = time.perf_counter()
        n_ws = len(res.windows) * args.steps
        runs.append({
            "acc": acc,
            "diffused_frames": len(keys),
            "windows": len(res.windows),
            "total_s": round(t4 - t1, 2),
            "sample_s": round(t2 - t1, 2),
            "decode_s": round(t3 - t2, 2),
            "to_uint8_and_interpolate_s": round(t4 - t3, 2),
            "before_first_window_s": round(marks.get("first_window", t1) - t1, 3),
            "first_step_s": round(marks.get("first_step", t1) - t1, 3),
            "per_window_step_s": round((t2 - marks.get("first_step", t1)) / max(1, n_ws - len(res.windows)), 4),
            "frames_per_s": round(args.frames / (t4 - t1), 2),
        })
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        assert len(frames) == args.frames
        del video, frames
    prof_rows = None
    if args.profile and cuda:
        from torch.profiler import ProfilerActivity, profile

        one = poses[:cfg.context_frames]
        sampler(ref, one, width=args.size, height=args.size, steps=1, decode=False)
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sampler(ref, one, width=args.size, height=args.size, steps=1, decode=False)
            sync()
        ev = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in ev)
        ev.sort(key=lambda e: -e.self_device_time_total)
        prof_rows = {"gpu_ms_total": round(total / 1e3, 1),
                     "top": [[e.key[:90], round(e.self_device_time_total / 1e3, 2), e.count] for e in ev[:25]]}
    out = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "settings": {"frames": args.frames, "size": args.size, "steps": args.steps, "cfg": args.cfg,
                     "dtype": args.dtype, "compat_loop": args.compat,
                     "low_vram": args.low_vram, "channels_last": args.channels_last,
                     "cudnn_benchmark": args.cudnn_benchmark, "compile": args.compile,
                     "context": [cfg.context_frames, cfg.context_overlap]},
        "build_s": round(t_build, 1),
        "runs": runs,
    }
    if cuda:
        out["vram"] = {"weights_gb": round(weights_gb, 2), "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                       "estimate_gb": round(vram_estimate(args.size, args.size, args.dtype, args.low_vram) / 1e9, 2)}
    if prof_rows:
        out["profile_one_window_step"] = prof_rows
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
