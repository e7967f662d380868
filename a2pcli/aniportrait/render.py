"""`--renderer aniportrait`: a2p's motion drawn as AniPortrait's landmark images, rendered by the
diffusion sampler, streamed into the video.

Every command ends in the same place as with the embedded renderer: per-frame target landmarks of
the portrait (`retarget.FaceTargets`: audio2video's lips and head motion, vid2vid's retargeted driver,
pose2vid's stored motion). This module

1. picks the output size: the portrait's aspect, the longer side `--size` (default 512), both sides
   multiples of 8 (non-square works; AniPortrait swaps width and height in one resize, we do not);
2. draws each frame's landmarks the way AniPortrait's FaceMeshVisualizer does (`draw.py`), scaled
   from the portrait's pixels to the output size;
3. runs the device preflight with this renderer's VRAM estimate *before* any weight is read;
4. loads the weights (`weights.open_weights`: sha256-checked, strict keys) and builds the models;
5. samples (`sampler.Pose2VideoSampler`: progress after every window of every step) and decodes the
   latents a few frames at a time straight into the encoder, so host memory stays bounded.

With `models.clip_group` (several processes under torchrun, a2pcli.aniportrait.split) step 5 first sends
the clip to the other processes (`send_clip`), which take their share of it (`render_share`).

    render_video_aniportrait(portrait, targets, fps, output, DiffusionOptions(), device=..., audio=..., models=...)
    vram_estimate(width, height, dtype, low_vram) -> bytes
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli.aniportrait.config import WINDOW_BATCH
from a2pcli.errors import InputError
from a2pcli.progress import Reporter

# AniPortrait's inference_v2.yaml `unet_additional_kwargs`: the denoising UNet's motion modules.
INFERENCE_V2_UNET_KWARGS = {
    "use_inflated_groupnorm": True,
    "unet_use_cross_frame_attention": False,
    "unet_use_temporal_attention": False,
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": True,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 32,
        "temporal_attention_dim_div": 1,
    },
}
SD15_BLOCKS = [320, 640, 1280, 1280]  # the released checkpoints' UNet width (full size)
CHECKPOINTS = ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "pose_guider.pth", "vae",
               "image_encoder")

# Parameters of the full-size networks (fixture key lists; CLIP ViT-L/14 vision tower + projection,
# sd-vae-ft-mse): what the weights occupy on the device.
FULLSIZE_PARAMS = {
    "reference_unet": 859_508_800,
    "denoiser": 859_520_964 + 454_417_600,
    "pose_guider": 167_528_848,
    "vae": 83_653_863,
    "image_encoder": 303_966_208,
}
# Activation memory of one denoiser call per latent pixel, frame and guidance row, bytes at 2-byte
# dtypes: 2.3 GB for a 16-frame window with CFG at 512x512 (H200, 2026-12-03; a window batch of k
# windows takes k times that). `--low-vram` runs the CFG rows one after the other and keeps only the
# denoiser and PoseGuider on the device while sampling.
ACT_BYTES_PER_LATENT_PX_FRAME = 17_500
DECODE_BYTES_PER_PX_FRAME = 1_530  # VAE decoder activations per output pixel and frame: 3.2 GB for 8 frames at 512x512
POSE_FEATURE_WINDOWS = 8  # PoseGuider features kept across steps for a 3-second clip (62 MB a window at 512x512)
POSE_FEATURE_CHANNELS_X_LEVELS = 320 * 1.5  # their 5 maps: 320 channels x (1 + 1/4 + 2/16 + 4/64 + 4/64) latent pixels
REFERENCE_PASS_BYTES_PER_LATENT_PX = 110_000  # CLIP + reference write on top of all weights
SLACK_BYTES = 300_000_000  # allocator slack


@dataclass(frozen=True)
class DiffusionOptions:
    steps: int = 25
    cfg: float = 3.5
    size: int = 512  # longer side of the output, px (multiple of 8)
    seed: int = 42  # AniPortrait's configs' seed
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 on the CPU
    low_vram: bool = False
    weights: str | None = None  # a pretrained_model folder; None: the pulled/imported model
    scheduler: str = "ddim"
    compat: bool = True  # AniPortrait's numbers, quirks included (see config.AniPortraitConfig)
    context_frames: int = 16
    context_overlap: int = 4
    decode_batch: int = 8
    acc: int = 1  # diffuse every acc-th frame, interpolate the rest (a2pcli.interpolate)
    compile: bool = False  # torch.compile the denoiser (GPU)
    split: str = "auto"  # one clip on several processes (torchrun): windows, cfg or auto (a2pcli.aniportrait.split)


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(W, H) with the portrait's aspect, the longer side `size`, both multiples of 8 (at least 64)."""
    if size % 8 or size < 64:
        raise InputError(f"--size {size} must be a multiple of 8, at least 64", subject="--size",
                         remedy="use 512 (AniPortrait's size), 384 or 768")
    scale = size / max(width, height)
    w = max(64, int(round(width * scale / 8)) * 8)
    h = max(64, int(round(height * scale / 8)) * 8)
    return w, h


class LandmarkImages(Sequence):
    """(T, 478, >=2) landmarks in pixels of a `src_size` (W, H) image, seen as T uint8 (H, W, 3)
    landmark images at `out_size`, drawn as AniPortrait draws them (468 mesh points; irises are not
    drawn) when a frame is asked for: the sampler takes one window's frames at a time, so a long clip
    never holds all its images at once (10 min at 512x512 would be 12 GB)."""

    def __init__(self, landmarks: np.ndarray, src_size: tuple[int, int], out_size: tuple[int, int]):
        self.landmarks = landmarks
        self.out_size = out_size
        self.scale = (out_size[0] / src_size[0], out_size[1] / src_size[1])

    def __len__(self) -> int:
        return len(self.landmarks)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from a2pcli.aniportrait.draw import draw_landmarks

        xy = np.asarray(self.landmarks[i][:468, :2], np.float64) * self.scale
        return draw_landmarks(self.out_size, xy)


class _Pick(Sequence):
    """The items `keys` of a sequence, as a sequence (drawn lazily when the source is)."""

    def __init__(self, source: Sequence, keys: Sequence[int]):
        self.source, self.keys = source, list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.source[self.keys[i]]


def landmark_images(landmarks: np.ndarray, src_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """All of LandmarkImages at once: (T, H, W, 3) uint8."""
    return np.stack(list(LandmarkImages(landmarks, src_size, out_size)))


def _dtype_bytes(dtype: str) -> int:
    return {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}[dtype]


def vram_estimate(width: int, height: int, dtype: str = "fp16", low_vram: bool = False,
                  context_frames: int = 16, cfg: bool = True, window_batch: int = WINDOW_BATCH,
                  decode_batch: int = 8) -> int:
    """Peak GPU memory of a full-size render at (width, height), bytes (for a clip of a few seconds:
    beyond that the kept PoseGuider features add 62 MB per 12 frames at 512x512, up to 4 GB). The
    largest of three phases: the start (every network on the device, the reference pass), the
    denoising loop (CLIP and the reference UNet parked on the host; `window_batch` windows'
    activations) and the VAE decode. `--low-vram`: the start, or sampling with only the denoiser and
    PoseGuider on the device, one guidance half at a time. Measured on an H200 at 512x512 fp16 with a
    window batch of 2: 8.25 GB uncompiled, 7.6 GB compiled (estimate 8.5 GB)."""
    b = _dtype_bytes(dtype)
    p = FULLSIZE_PARAMS
    every = sum(p.values()) * b
    latent_px = (width // 8) * (height // 8)
    rows = 2 if cfg else 1
    act = ACT_BYTES_PER_LATENT_PX_FRAME * latent_px * context_frames * rows * (b / 2)
    start = every + REFERENCE_PASS_BYTES_PER_LATENT_PX * latent_px * (b / 2)
    if low_vram:
        sampling = (p["denoiser"] + p["pose_guider"]) * b + act / rows
        return int(max(start, sampling) + SLACK_BYTES)
    resident = (p["denoiser"] + p["pose_guider"] + p["vae"]) * b
    pose = POSE_FEATURE_WINDOWS * POSE_FEATURE_CHANNELS_X_LEVELS * latent_px * context_frames * b
    loop = resident + act * max(1, window_batch) + pose
    decode = resident + DECODE_BYTES_PER_PX_FRAME * width * height * decode_batch * (b / 2)
    return int(max(start, loop, decode) + SLACK_BYTES)


def torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}[name]


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return dtype


def load_models(weights_source: str | None, dtype: str, device: str, reporter: Reporter | None = None):
    """Open the weights (sha256 + strict keys) and build the five networks on `device`."""
    import torch

    from a2pcli.aniportrait.sampler import build_models
    from a2pcli.aniportrait.weights import open_weights

    reporter = reporter or Reporter()
    w = open_weights(weights_source)
    unet_cfg = w.config("unet_config")
    # the shipped full-size key table describes the released checkpoints; a folder built for another
    # UNet width (tests' tiny configs) is checked key by key by the strict model builders instead
    w.fullsize = list(unet_cfg.get("block_out_channels", [])) == SD15_BLOCKS
    configs = {
        "unet_2d_and_3d_base": unet_cfg,
        "unet3d_additional_kwargs": INFERENCE_V2_UNET_KWARGS,
        "pose_guider": {"noise_latent_channels": int(unet_cfg["block_out_channels"][0]), "use_ca": True},
        "vae_AutoencoderKL": w.config("vae_config"),
        "clip_CLIPVisionConfig": w.config("image_encoder_config"),
    }
    reporter.stage("load weights", total=len(CHECKPOINTS))
    state = {}
    for name in CHECKPOINTS:
        state[name] = w.state_dict(name)
        reporter.advance(1)
    models = build_models(configs, state, dtype=torch_dtype(dtype), device=device)
    del state
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return models


def sampler_config(dopts: DiffusionOptions, width: int, height: int, dtype: str):
    """AniPortrait's numbers (its quirks included) with the exact savings on; `compat=False` takes the
    clean alternatives: windows that do not wrap round to the first frames, pose images in [-1, 1] as
    in training, and overlapping windows averaged without CFG too."""
    from a2pcli.aniportrait.config import AniPortraitConfig

    cfg = AniPortraitConfig(width=width, height=height, steps=dopts.steps, guidance_scale=dopts.cfg,
                            seed=dopts.seed, dtype=dtype, scheduler=dopts.scheduler,
                            context_frames=dopts.context_frames, context_overlap=dopts.context_overlap,
                            vae_decode_batch=dopts.decode_batch, sequential_cfg=dopts.low_vram,
                            offload=dopts.low_vram)
    if not dopts.compat:
        cfg = cfg.replace(windows="no_wrap", pose_input_scale="unit", nocfg_overlap="mean")
    return cfg.validate()


def _diffused_landmarks(landmarks: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """(K, 468, 2) landmarks of the diffused frames: what LandmarkImages draws."""
    return np.ascontiguousarray(np.asarray(landmarks)[np.asarray(keys), :468, :2])


def send_clip(group, config, ref_image: np.ndarray, landmarks: np.ndarray, src_size: tuple[int, int],
              settings: dict):
    """Rank 0 of a ClipGroup: everything the other processes need to take their share of the clip (the
    sampler's config, the models' settings, the reference image, the landmarks (K, 468, 2) of the frames to
    diffuse in pixels of a `src_size` image); returns rank 0's share (a2pcli.aniportrait.split.ClipShare)."""
    import dataclasses

    from a2pcli.aniportrait.split import plan_split
    from a2pcli.aniportrait.windows import context_windows

    windows = context_windows(len(landmarks), config.context_frames, config.context_overlap, config.context_stride,
                              config.windows)
    share = plan_split(settings["split"], group.launch.world_size, len(windows), config.do_cfg)
    header = {**settings, "mode": share.mode, "config": dataclasses.asdict(config), "src_size": list(src_size)}
    group.send_clip(header, {"ref_image": np.ascontiguousarray(ref_image), "landmarks": landmarks})
    return share


def render_share(models, header: dict, arrays: dict, share) -> None:
    """The other processes of a ClipGroup: this process's share of the clip rank 0 sent (its sampler with
    rank 0's config on the same reference image and landmark images), nothing decoded or written."""
    from a2pcli.aniportrait.config import AniPortraitConfig
    from a2pcli.aniportrait.sampler import Pose2VideoSampler

    config = AniPortraitConfig(**header["config"])
    poses = LandmarkImages(arrays["landmarks"], tuple(header["src_size"]), (config.width, config.height))
    Pose2VideoSampler(models, config)(arrays["ref_image"], poses, decode=False, share=share)


def render_video_aniportrait(portrait, tgt, fps: float, output: Path, dopts: DiffusionOptions, *, device: str = "auto",
                             crf: int = 18, frames_dir: Path | None = None, audio=None,
                             reporter: Reporter | None = None, models=None) -> dict:
    """Render target landmarks `tgt` (retarget.FaceTargets, pixels of portrait.image) with the diffusion
    renderer into the video file `output` (a temp path from outputs.atomic_path). `models`: what holds the
    loaded networks from one call to the next (`models.aniportrait(weights, dtype, device, reporter)`, e.g.
    a2pcli.pipeline.Models: a batch reads and checks the weights once); None loads them for this call."""
    from a2pcli.aniportrait.split import check_split
    from a2pcli.device import JobEstimate, preflight
    from a2pcli.encode import VideoWriter

    reporter = reporter or Reporter()
    group = getattr(models, "clip_group", None)  # a2pcli.aniportrait.split.ClipGroup: the clip on several processes
    check_split(dopts.split, group.launch.world_size if group is not None else 1, dopts.cfg)
    t0 = time.perf_counter()
    n = len(tgt)
    ph, pw = portrait.image.shape[:2]
    width, height = output_size(pw, ph, dopts.size)
    want = dopts.dtype
    est_dtype = "fp16" if want == "auto" else want
    need = vram_estimate(width, height, est_dtype, dopts.low_vram, dopts.context_frames, dopts.cfg > 1)
    choice = preflight(device, JobEstimate("aniportrait", vram_bytes=need))
    dtype = resolve_dtype(want, choice.device)
    vram = vram_estimate(width, height, dtype, dopts.low_vram, dopts.context_frames, dopts.cfg > 1) \
        if choice.device.startswith("cuda") else 0
    reporter.info(f"device: {choice.device} ({choice.name}); {choice.reason}; aniportrait renderer, {width}x{height}, "
                  f"{dopts.steps} steps, cfg {dopts.cfg}, {dtype}"
                  + (f", about {vram / 1e9:.1f} GB of GPU memory" if vram else ""), once=True)
    if not choice.device.startswith("cuda"):
        reporter.warn("the aniportrait renderer on the CPU takes minutes per frame at full size; use a GPU, "
                      "or the embedded renderer (--renderer embedded)", once=True)

    if models is None:
        models = load_models(dopts.weights, dtype, choice.device, reporter)
    else:
        models = models.aniportrait(dopts.weights, dtype, choice.device, reporter)
    from a2pcli.aniportrait.runtime import speed_settings

    notes = []
    if dopts.split != DiffusionOptions.split and group is None:
        notes.append(f"--split {dopts.split} applies to one clip under torchrun with several processes: one "
                     "process rendered it")
    compiled = bool(dopts.compile) and choice.device.startswith("cuda")
    if dopts.compile and not compiled:
        notes.append("--compile applies on a GPU only: the denoiser ran uncompiled")
    speed_settings(models, compile=compiled and not getattr(models, "compiled", False))  # a batch reuses the set
    models.compiled = getattr(models, "compiled", False) or compiled
    t_load = time.perf_counter() - t0

    from a2pcli.interpolate import key_frames

    acc = max(1, int(dopts.acc))
    keys = key_frames(n, acc)
    poses = LandmarkImages(tgt.landmarks, (pw, ph), (width, height))
    if len(keys) < n:
        poses = _Pick(poses, keys)
        reporter.info(f"--acc {acc}: diffusing {len(keys)} of {n} frames, the rest interpolated")

    from a2pcli.aniportrait.sampler import Pose2VideoSampler, video_to_frames
    from a2pcli.aniportrait.vae import decode_latents

    sampler = Pose2VideoSampler(models, sampler_config(dopts, width, height, dtype))
    share = None
    if group is not None:  # the others draw the same landmark images from the same numbers
        landmarks = _diffused_landmarks(tgt.landmarks, keys)
        poses = LandmarkImages(landmarks, (pw, ph), (width, height))
        share = send_clip(group, sampler.config, portrait.image, landmarks, (pw, ph),
                          {"weights": dopts.weights, "dtype": dtype, "device": choice.device, "compile": compiled,
                           "split": dopts.split})
        reporter.info(f"one clip on {share.world} processes: {share.mode} split", once=True)
    state = {"stage": None}

    def progress(ev):
        if ev.stage != "denoise":
            return
        if state["stage"] is None:
            state["stage"] = "denoise"
            reporter.stage("denoise", total=ev.steps * ev.windows)
        reporter.advance(1)

    t1 = time.perf_counter()
    result = sampler(portrait.image, poses, width=width, height=height, steps=dopts.steps,
                     guidance_scale=dopts.cfg, seed=dopts.seed, progress=progress, decode=False, share=share)
    if group is not None:
        group.clip_done()
    t_sample = time.perf_counter() - t1
    if compiled:  # the kernels for these shapes are in the a2p cache now (`a2p doctor` reports it)
        from a2pcli.aniportrait.runtime import mark_compile_warm

        mark_compile_warm({"size": [width, height], "window_frames": sampler.config.context_frames,
                           "window_batch": sampler.config.window_batch, "dtype": dtype})

    reporter.stage("decode and encode", total=n)
    t2 = time.perf_counter()
    latents = result.latents
    k = max(1, int(dopts.decode_batch))

    def decoded():
        for start in range(0, latents.shape[2], k):
            video = decode_latents(models.vae, latents[:, :, start:start + k], batch=k)
            yield from video_to_frames(video)

    frames = decoded()
    if len(keys) < n:
        from a2pcli.interpolate import fill

        frames = fill(keys, frames)
    with VideoWriter(output, (width, height), fps, crf=crf, audio=audio, frames_dir=frames_dir) as writer:
        batch = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == k:
                writer.write_batch(np.stack(batch))
                reporter.advance(len(batch))
                batch = []
        if batch:
            writer.write_batch(np.stack(batch))
            reporter.advance(len(batch))
    t_decode = time.perf_counter() - t2
    peak = 0
    if choice.device.startswith("cuda"):
        import torch

        peak = torch.cuda.max_memory_allocated(choice.device)
    elapsed = time.perf_counter() - t0
    return {
        "frames": n,
        "fps": fps,
        "duration_s": round(n / fps, 3),
        "size": [width, height],
        "device": choice.device,
        "renderer": "aniportrait",
        "steps": dopts.steps,
        "scheduler": dopts.scheduler,
        "quirks": "aniportrait" if dopts.compat else "clean",
        "cfg": dopts.cfg,
        "dtype": dtype,
        "windows": len(result.windows),
        "split": None if share is None else {"mode": share.mode, "processes": share.world},
        "acc": acc,
        "diffused_frames": len(keys),
        "compiled": compiled,
        "vram_estimate_gb": round(vram / 1e9, 2),
        "vram_peak_gb": round(peak / 1e9, 2),
        "audio": None if audio is None else str(audio.path),
        "notes": notes,
        "timings_s": {"load": round(t_load, 3), "sample": round(t_sample, 3), "decode_and_encode": round(t_decode, 3)},
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(n / max(elapsed, 1e-9), 2),
    }
