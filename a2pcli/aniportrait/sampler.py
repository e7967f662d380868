"""AniPortrait's Lmk2Video sampler: `Pose2VideoPipeline.__call__` (src/pipelines/
pipeline_pose2vid_long.py) on our diffusers-based models.

Compat mode (`AniPortraitConfig.compat()`) follows the original step by step:

1. CLIP: `ref.resize((224, 224))` + default CLIPImageProcessor -> `image_embeds` (1, D) -> (1, 1, D);
   with CFG the encoder states are `[zeros, clip]` (the uncond half has no CLIP and no reference).
2. Initial latents (1, 4, N, H/8, W/8): `torch.randn` from `torch.manual_seed(seed)` on CPU in the
   model dtype (or injected `init_noise`), times `init_noise_sigma`.
3. Reference latents: Lanczos resize to (W, H), VAE posterior mean x 0.18215.
4. Pose frames: uint8 images as drawn (no channel swap) -> 2*u8 - 1 in [-1, 509] (the diffusers 0.24
   quirk).
5. Reference write pass, once, at t = 0, batch `[uncond, cond]` (CFG) or cond (no CFG); the bank
   is rounded to fp16 (`bank_fp16_round`).
6. Windows: `uniform(0, steps, N, 16, 1, 4)` closed loop, the same at every step.
7. Every step, every window: latents of the window (x2 for CFG); PoseGuider on the window's pose
   frames (x2 for CFG), BatchNorm on the batch statistics; denoiser -> v-prediction; summed into
   the frames of the window, with a per-frame counter.
8. CFG: `(sum / counter).chunk(2)` -> `u + s (c - u)`. Without CFG the original never divides by the
   counter: overlapping frames get the *sum* of their windows' predictions (`nocfg_overlap="sum"`).
9. `DDIMScheduler.step(v, t, latents, eta=0)`.
10. Decode one frame at a time: `latents / 0.18215`, `(x/2 + 0.5).clamp(0, 1)`, float32.

Exact savings (`AniPortraitConfig()` defaults; each within fp tolerance of compat, see the tests):
`reference_cond_only` (write pass on the cond row only), `pose_cache` (PoseGuider once per window
on one CFG copy, reused at every step), `vae_decode_batch` (several frames per decoder call),
`window_batch` (several windows per denoiser call: `WindowStep`), `park_reference` (CLIP and the
reference UNet in host memory while the windows are denoised).

Public API::

    models = build_models(configs, weights, dtype=torch.float16, device="cuda")
    sampler = Pose2VideoSampler(models, AniPortraitConfig(width=512, height=512))
    result = sampler(ref_image_pil, pose_images_uint8, progress=callback)
    frames = video_to_frames(result.video)          # list of (H, W, 3) uint8 RGB
    result = sampler(..., share=ClipShare("windows", rank, world))   # this process's part of a clip
                                                    # rendered by several (a2pcli.aniportrait.split)

`configs` holds the model configs under CONFIG_KEYS' names; `weights` the AniPortrait-format state
dicts under WEIGHT_KEYS' names (the checkpoint files' names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from a2pcli.aniportrait.clip import build_image_encoder, clip_image_embeds, clip_pixel_values
from a2pcli.aniportrait.config import AniPortraitConfig
from a2pcli.aniportrait.pose_guider import build_pose_guider, pose_tensor
from a2pcli.aniportrait.scheduler import build_scheduler, step_kwargs
from a2pcli.aniportrait.vae import as_rgb_pil, build_vae, decode_latents, encode_reference, ref_image_tensor
from a2pcli.aniportrait.windows import context_windows, coverage
from a2pcli.errors import InputError

if TYPE_CHECKING:
    from a2pcli.aniportrait.split import ClipShare

# Where each model's config lives in the configs dict (names of the fixtures' configs.json).
CONFIG_KEYS = {
    "unet": "unet_2d_and_3d_base",  # SD1.5 unet/config.json
    "unet3d": "unet3d_additional_kwargs",  # inference_v2.yaml unet_additional_kwargs
    "pose_guider": "pose_guider",  # {"noise_latent_channels": 320, "use_ca": true}
    "vae": "vae_AutoencoderKL",  # sd-vae-ft-mse config.json
    "clip": "clip_CLIPVisionConfig",  # image_encoder config.json
}
# Where each state dict lives in the weights dict (AniPortrait's checkpoint names).
WEIGHT_KEYS = {
    "reference_unet": "reference_unet.pth",
    "denoising_unet": "denoising_unet.pth",
    "motion_module": "motion_module.pth",
    "pose_guider": "pose_guider.pth",
    "vae": "vae",
    "image_encoder": "image_encoder",
}


POSE_CACHE_BYTES = 4 << 30  # device memory the per-window PoseGuider features may keep across steps


def _pose_feature_bytes(pose_guider, frames: int, height: int, width: int) -> int:
    """Bytes of the PoseGuider's five feature maps for one window (one CFG copy)."""
    c = int(pose_guider.final_proj.out_channels) if hasattr(pose_guider, "final_proj") else 320
    h, w = height // 8, width // 8
    size = torch.finfo(pose_guider.dtype).bits // 8 if pose_guider.dtype.is_floating_point else 4
    maps = h * w + h * w // 4 + h * w // 16 * 2 + h * w // 64 * 4 + h * w // 64 * 4  # channels x1, x1, x2, x4, x4
    return int(c * maps * frames * size)


@dataclass
class AniPortraitModels:
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    reference_unet: torch.nn.Module
    denoiser: torch.nn.Module
    pose_guider: torch.nn.Module
    host: dict = field(default_factory=dict, repr=False)
    """Host copies of parked networks' tensors, by (network, tensor name)."""
    parked: list = field(default_factory=list, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def park(self, *nets: torch.nn.Module) -> None:
        """Free the GPU memory of networks that the rest of a render does not use (CLIP and the
        reference UNet once the bank is written: 2.3 GB at full size in fp16). Their tensors are
        copied to pinned host memory the first time and the copies kept (the weights never change),
        so parking again costs nothing and `unpark` is one host-to-device copy. No-op off the GPU."""
        for net in nets:
            p = next(net.parameters(), None)
            if p is None or p.device.type != "cuda":
                continue
            for name, t in [*net.named_parameters(), *net.named_buffers()]:
                key = (id(net), name)
                if key not in self.host:
                    self.host[key] = torch.empty_like(t, device="cpu", pin_memory=True).copy_(t)
                t.data = self.host[key]
            self.parked.append((net, p.device))

    def unpark(self) -> None:
        """Parked networks back on their GPU."""
        while self.parked:
            net, device = self.parked.pop()
            for name, t in [*net.named_parameters(), *net.named_buffers()]:
                t.data = self.host[(id(net), name)].to(device, non_blocking=True)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device


def build_models(configs: dict, weights: dict, dtype=torch.float16, device="cpu",
                 pose_bn: str = "batch") -> AniPortraitModels:
    """All five networks from their configs and AniPortrait-format state dicts (see CONFIG_KEYS,
    WEIGHT_KEYS), every load strict."""
    from a2pcli.aniportrait.unet import build_denoiser, build_reference_unet

    c, w = CONFIG_KEYS, WEIGHT_KEYS
    return AniPortraitModels(
        vae=build_vae(configs[c["vae"]], weights[w["vae"]], dtype=dtype, device=device),
        image_encoder=build_image_encoder(configs[c["clip"]], weights[w["image_encoder"]], dtype=dtype, device=device),
        reference_unet=build_reference_unet(configs[c["unet"]], weights[w["reference_unet"]], dtype=dtype,
                                            device=device),
        denoiser=build_denoiser(configs[c["unet"]], configs[c["unet3d"]], weights[w["denoising_unet"]],
                                weights[w["motion_module"]], dtype=dtype, device=device),
        pose_guider=build_pose_guider(configs[c["pose_guider"]], weights[w["pose_guider"]], dtype=dtype,
                                      device=device, bn_mode=pose_bn),
    )


@dataclass
class SamplerProgress:
    """One progress event: `stage` "denoise" after each window of each step (step/steps and
    window/windows are 1-based counts done), or "decode" after each VAE decode call (window/windows
    then count decoded frames)."""

    stage: str
    step: int
    steps: int
    window: int
    windows: int
    timestep: int | None = None


@dataclass
class SamplerResult:
    latents: torch.Tensor
    """Final latents (1, 4, N, H/8, W/8)."""
    video: torch.Tensor | None
    """(1, 3, N, H, W) float32 in [0, 1] (None when decoding was skipped)."""
    windows: list[list[int]]
    trace: dict = field(default_factory=dict)
    """With `trace=True`: the intermediate values named as in the fixtures (clip_pixel_values,
    clip_image_embeds, vae_encode_input, ref_latents, bank, init_noise, step_timesteps,
    step_guided_model_output, step_latents_after, unet_call_outputs) plus pose_guider_calls."""


def video_to_frames(video: torch.Tensor) -> list[np.ndarray]:
    """(1, 3, N, H, W) in [0, 1] -> N uint8 (H, W, 3) RGB frames. Truncates like AniPortrait's
    `save_videos_grid` (`(x * 255).astype(uint8)`)."""
    v = video[0].permute(1, 2, 3, 0).float().cpu().numpy()
    return [f for f in (v * 255).astype(np.uint8)]


def chunks(windows: list[list[int]], size: int) -> list[list[int]]:
    """Indices of `windows` grouped for batched denoiser calls: consecutive runs of at most `size`
    windows of equal length (a batch needs one frame count)."""
    out: list[list[int]] = []
    for i, w in enumerate(windows):
        if out and len(out[-1]) < max(1, int(size)) and len(windows[out[-1][0]]) == len(w):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def window_counter(windows: list[list[int]], latents: torch.Tensor) -> torch.Tensor:
    """How many of `windows` cover each frame of latents (1, 4, N, h, w): (1, 1, N, 1, 1), their dtype."""
    count = coverage(windows, latents.shape[2])
    return torch.tensor(count, dtype=latents.dtype, device=latents.device).reshape(1, 1, -1, 1, 1)


def guide(noise_pred: torch.Tensor, counter: torch.Tensor, guidance: float, do_cfg: bool,
          nocfg_overlap: str = "sum") -> torch.Tensor:
    """Summed window predictions (rows, 4, N, h, w) and the per-frame window count (1, 1, N, 1, 1) ->
    the guided prediction (1, 4, N, h, w): `u + s (c - u)` on the window means with CFG; without
    CFG the sum (AniPortrait's quirk, "sum") or the mean."""
    if do_cfg:
        uncond, cond = (noise_pred / counter).chunk(2)
        return uncond + guidance * (cond - uncond)
    if nocfg_overlap == "sum":
        return noise_pred
    return noise_pred / counter


class WindowStep:
    """One denoising step over a list of context windows: the denoiser's v-predictions of every
    window, summed into the frames each window covers, with the per-frame window count.

    `sums(latents, t, windows)` is the unit of work of a step: the sums of disjoint lists of windows
    add up to the sums of their union, so a step's windows can be split between processes and the
    results added. Up to `window_batch` windows of one length go through the denoiser in one call
    (batch `[uncond windows..., cond windows...]`); each window's prediction is the same as alone up
    to the rounding of the larger matrix products, and the sums are taken in window order.

    The PoseGuider runs once per window (`pose_cache`; its BatchNorm takes the window's own frame
    statistics) and its features are kept across steps when `keep_features`; without `pose_cache`
    (compat) it runs on both CFG copies of every window at every step, as the original does."""

    def __init__(self, denoiser, pose_guider, pose: Callable, ehs: torch.Tensor, bank, *, rows: int,
                 pose_cache: bool = True, keep_features: bool = True, sequential_cfg: bool = False,
                 ref_pose: torch.Tensor | None = None, window_batch: int = 1):
        self.denoiser, self.pose_guider, self.pose = denoiser, pose_guider, pose
        self.ehs, self.bank, self.rows = ehs, bank, rows
        self.pose_cache, self.keep_features = pose_cache, keep_features
        self.sequential_cfg, self.ref_pose = sequential_cfg, ref_pose
        self.window_batch = 1 if sequential_cfg else max(1, int(window_batch))
        self.pose_guider_calls = 0
        self._features: dict[tuple, list[torch.Tensor]] = {}

    def window_features(self, window: list[int]) -> list[torch.Tensor]:
        """The PoseGuider's 5 maps for one window: (1, c, f, h, w) with `pose_cache` (broadcast
        over the CFG rows), else (rows, c, f, h, w)."""
        if not self.pose_cache:
            self.pose_guider_calls += 1
            return self.pose_guider(self.pose(window).repeat(self.rows, 1, 1, 1, 1), self.ref_pose)
        key = tuple(window)
        fea = self._features.get(key)
        if fea is None:
            fea = self.pose_guider(self.pose(window), None)  # one copy; broadcast later
            self.pose_guider_calls += 1
            if self.keep_features:
                self._features[key] = fea
        return fea

    def batch_features(self, group: list[list[int]]) -> list[torch.Tensor]:
        """Features of a group of k windows, batched like the denoiser's input: (k, ...) when each
        window has one copy, else (rows * k, ...) ordered [row 0 of every window, row 1 ...]."""
        per = [self.window_features(w) for w in group]
        if len(group) == 1:
            return per[0]
        out = []
        for maps in zip(*per):
            if all(x.shape[0] == 1 for x in maps):
                out.append(torch.cat(maps))
            else:
                full = [x.expand(self.rows, *x.shape[1:]) for x in maps]
                out.append(torch.cat([x[r:r + 1] for r in range(self.rows) for x in full]))
        return out

    def predict(self, x: torch.Tensor, t, fea: list[torch.Tensor], k: int) -> torch.Tensor:
        """Denoiser on the batch x (rows * k, 4, f, h, w) ordered [uncond windows..., cond windows...]."""
        den, rows = self.denoiser, self.rows
        ehs = self.ehs.repeat_interleave(k, dim=0) if k > 1 else self.ehs
        if rows == 2 and self.sequential_cfg:
            def half(r):
                return [f if f.shape[0] == 1 else f[r * k:(r + 1) * k] for f in fea]
            return torch.cat([den(x[:k], t, ehs[:k], half(0), None, False),
                              den(x[k:], t, ehs[k:], half(1), self.bank, False)])
        return den(x, t, ehs, fea, self.bank, rows == 2)

    @torch.no_grad()
    def sums(self, latents: torch.Tensor, t, windows: list[list[int]],
             on_window: Callable[[int, list[int], torch.Tensor], None] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (1, 4, N, h, w) (scaled for the model) -> (sums (rows, 4, N, h, w), counter
        (1, 1, N, 1, 1)) over `windows`; `on_window(i, window, pred (rows, 4, f, h, w))` after each."""
        n = latents.shape[2]
        noise_pred = torch.zeros((self.rows, *latents.shape[1:]), device=latents.device, dtype=latents.dtype)
        counter = torch.zeros((1, 1, n, 1, 1), device=latents.device, dtype=latents.dtype)
        for idx in chunks(windows, self.window_batch):
            group = [windows[i] for i in idx]
            k = len(group)
            x = torch.cat([latents[:, :, w] for w in group]).repeat(self.rows, 1, 1, 1, 1)
            pred = self.predict(x, t, self.batch_features(group), k)
            for j, (i, window) in enumerate(zip(idx, group)):
                p = pred[j::k] if k > 1 else pred
                noise_pred[:, :, window] = noise_pred[:, :, window] + p
                counter[:, :, window] = counter[:, :, window] + 1
                if on_window is not None:
                    on_window(i, window, p)
        return noise_pred, counter


class Pose2VideoSampler:
    def __init__(self, models: AniPortraitModels, config: AniPortraitConfig | None = None):
        self.models = models
        self.config = (config or AniPortraitConfig()).validate()
        models.pose_guider.set_bn_mode(self.config.pose_bn)

    # -- stages ------------------------------------------------------------------------------------
    def clip_condition(self, ref_image) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel values (1,3,224,224) float32, image_embeds (1, D) in the model dtype)."""
        pixels = clip_pixel_values(ref_image)
        return pixels, clip_image_embeds(self.models.image_encoder, pixels)

    def reference_latents(self, ref_image, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(VAE input (1,3,H,W), latents (1,4,H/8,W/8) = posterior mean x 0.18215)."""
        vae = self.models.vae
        p = next(vae.parameters())
        try:
            x = ref_image_tensor(ref_image, width, height, dtype=p.dtype, device=p.device)
        except ValueError as e:
            raise InputError(str(e), subject="reference image") from None
        return x, encode_reference(vae, x)

    def pose_input(self, frames, width: int, height: int) -> torch.Tensor:
        pg = self.models.pose_guider
        try:
            return pose_tensor(frames, self.config.pose_input_scale, height, width, dtype=pg.dtype, device=pg.device)
        except ValueError as e:
            raise InputError(str(e), subject="pose images") from None

    def swap_for_decode(self) -> None:
        """With `offload`: denoiser and PoseGuider off the GPU, the VAE back on it."""
        m = self.models
        device = m.device
        if device.type != "cuda":
            return
        m.denoiser.to("cpu")
        m.pose_guider.to("cpu")
        torch.cuda.empty_cache()
        m.vae.to(device)
        self._device = device

    def restore(self) -> None:
        """Every network back on the sampling device (after an offloaded run)."""
        device = getattr(self, "_device", None)
        if device is None:
            return
        for net in (self.models.denoiser, self.models.pose_guider, self.models.image_encoder,
                    self.models.reference_unet, self.models.vae):
            net.to(device)

    def initial_noise(self, num_frames: int, height: int, width: int, seed: int) -> torch.Tensor:
        """torch.randn((1, 4, N, H/8, W/8)) from torch.manual_seed(seed), drawn on CPU in the model
        dtype (diffusers' randn_tensor with a CPU generator)."""
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((1, 4, num_frames, height // 8, width // 8), generator=gen, dtype=self.models.dtype)
        return x.to(self.models.device)

    # -- the whole pipeline ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, ref_image, pose_images, ref_pose=None, *, width: int | None = None,
                 height: int | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int | None = None, init_noise: torch.Tensor | None = None,
                 progress: Callable[[SamplerProgress], None] | None = None, decode: bool = True,
                 trace: bool = False, share: ClipShare | None = None) -> SamplerResult:
        """Render N frames from a reference image (PIL or uint8 RGB) and N pose images (uint8
        (H, W, 3), channel order as drawn). `ref_pose` is accepted for the original's signature and
        has no effect (the PoseGuider ignores it). Arguments left None come from the config.
        `share`: this process's part of each step when several processes render the clip together
        (a2pcli.aniportrait.split; progress then counts this process's windows)."""
        self.restore()
        self.models.unpark()
        cfg = self.config
        width = int(width or cfg.width)
        height = int(height or cfg.height)
        steps = int(steps or cfg.steps)
        guidance = float(cfg.guidance_scale if guidance_scale is None else guidance_scale)
        seed = cfg.seed if seed is None else seed
        do_cfg = guidance > 1.0
        if width % 8 or height % 8:
            raise InputError(f"width and height must be multiples of 8, not {width}x{height}", subject="aniportrait")
        n = len(pose_images)
        if n < 1:
            raise InputError("no pose frames to render", subject="aniportrait")
        try:
            ref_image = as_rgb_pil(ref_image)
        except ValueError as e:
            raise InputError(str(e), subject="reference image") from None
        m = self.models
        dtype, device = m.dtype, m.device
        rec: dict = {} if trace else None

        # 1. CLIP
        pixels, embeds = self.clip_condition(ref_image)
        ehs = embeds.to(device=device, dtype=dtype)[:, None]  # (1, 1, D)
        if do_cfg:
            ehs = torch.cat([torch.zeros_like(ehs), ehs])

        # 2. scheduler and initial latents
        scheduler = build_scheduler(cfg.scheduler, cfg.scheduler_kwargs)
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        if init_noise is None:
            latents = self.initial_noise(n, height, width, seed)
        else:
            latents = init_noise.to(device=device, dtype=dtype)
            if tuple(latents.shape) != (1, 4, n, height // 8, width // 8):
                raise InputError(f"init_noise has shape {tuple(latents.shape)}, expected "
                                 f"{(1, 4, n, height // 8, width // 8)}", subject="aniportrait")
        latents = latents * scheduler.init_noise_sigma
        if trace:
            rec.update(clip_pixel_values=pixels, clip_image_embeds=embeds, init_noise=latents.clone())

        # 3. reference latents; 4. pose frames
        vae_in, ref_latents = self.reference_latents(ref_image, width, height)
        # pose frames stay uint8 on the host; each window's are converted when it runs, so a long
        # clip needs no (1, 3, N, H, W) tensor on the device
        pose_frames = pose_images if isinstance(pose_images, Sequence) else list(pose_images)
        self.pose_input(pose_frames[:1], width, height)  # size and type checked before any work

        def pose(window) -> torch.Tensor:
            return self.pose_input([pose_frames[i] for i in window], width, height)
        ref_pose_t = None
        if ref_pose is not None and not cfg.pose_cache:  # the original computes it; it has no effect
            ref_pose_t = self.pose_input([ref_pose], width, height)[:, :, 0]
        if trace:
            rec.update(vae_encode_input=vae_in, ref_latents=ref_latents)

        # 5. reference write pass (once; not for the unguided half alone, which never reads it)
        from a2pcli.aniportrait.unet import write_reference

        if share is not None and share.mode == "cfg" and not do_cfg:
            raise InputError("a guidance split needs guidance (a scale above 1)", subject="aniportrait")
        half = share.half if share is not None else None
        bank = None if half == 0 else write_reference(m.reference_unet, ref_latents, embeds, do_cfg=do_cfg,
                                                      fp16_round=cfg.bank_fp16_round,
                                                      cond_only=cfg.reference_cond_only)
        if trace:
            rec["bank"] = bank
        if cfg.offload and device.type == "cuda":
            for net in (m.image_encoder, m.reference_unet, m.vae):
                net.to("cpu")
            torch.cuda.empty_cache()
        elif cfg.park_reference:
            m.park(m.image_encoder, m.reference_unet)  # not used again until the next render

        # 6. windows
        windows = context_windows(n, cfg.context_frames, cfg.context_overlap, cfg.context_stride, cfg.windows)
        rows = 2 if do_cfg else 1
        mine = [windows[i] for i in share.windows(len(windows))] if share is not None else windows
        # the PoseGuider's features of every window are kept across steps while they fit the budget
        # (about 62 MB a window at 512x512 fp16); beyond it they are recomputed each step
        per_window = _pose_feature_bytes(m.pose_guider, cfg.context_frames, height, width)
        cache_ok = cfg.pose_cache and len(mine) * per_window <= POSE_CACHE_BYTES
        step_rows, step_ehs = (rows, ehs) if half is None else (1, ehs[half:half + 1])
        step = WindowStep(m.denoiser, m.pose_guider, pose, step_ehs, bank, rows=step_rows,
                          pose_cache=cfg.pose_cache, keep_features=cache_ok, sequential_cfg=cfg.sequential_cfg,
                          ref_pose=ref_pose_t, window_batch=cfg.window_batch)
        extra = step_kwargs(scheduler, cfg.eta, None)
        guided_all, after_all, calls_all = [], [], []

        # 7.-9. denoising loop
        for si, t in enumerate(timesteps):
            def on_window(wi, window, pred, si=si, t=t):
                if trace:
                    calls_all.append(pred.clone())
                if progress is not None:
                    progress(SamplerProgress("denoise", si + 1, len(timesteps), wi + 1, len(mine), int(t)))

            noise_pred, counter = step.sums(scheduler.scale_model_input(latents, t), t, mine, on_window)
            if share is not None:  # every process's windows and halves, added up
                noise_pred, counter = share.combine(noise_pred, rows), window_counter(windows, latents)
            guided = guide(noise_pred, counter, guidance, do_cfg, cfg.nocfg_overlap)
            latents = scheduler.step(guided, t, latents, **extra).prev_sample
            if trace:
                guided_all.append(guided.clone())
                after_all.append(latents.clone())
        pg_calls = step.pose_guider_calls
        del step

        if trace:
            rec.update(step_timesteps=timesteps.clone(), step_guided_model_output=torch.stack(guided_all),
                       step_latents_after=torch.stack(after_all), unet_call_outputs=torch.stack(calls_all),
                       pose_guider_calls=pg_calls, windows=windows)

        # 10. decode
        video = None
        if cfg.offload and device.type == "cuda":
            self.swap_for_decode()
        if decode:
            total = latents.shape[2]

            def decode_progress(done, _total):
                if progress is not None:
                    progress(SamplerProgress("decode", len(timesteps), len(timesteps), done, total))

            video = decode_latents(m.vae, latents, batch=cfg.vae_decode_batch, progress=decode_progress)
        return SamplerResult(latents=latents, video=video, windows=windows, trace=rec or {})
