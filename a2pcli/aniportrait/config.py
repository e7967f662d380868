"""Every default of AniPortrait's Lmk2Video stage, and the switches between its exact behaviour
("compat") and cleaner or faster alternatives.

The defaults reproduce `scripts/audio2vid.py` + `configs/inference/inference_v2.yaml` +
`Pose2VideoPipeline.__call__` at AniPortrait commit 7f6593f (see shared/design/aniportrait-arch.md
§1). Every field documents where its default comes from; "compat" flags name the original's
behaviour first.

Two groups of switches:

* **Compat flags** change the numbers (they choose between the original's quirk and a cleaner
  behaviour): `pose_bn`, `pose_input_scale`, `bank_fp16_round`, `windows`, `nocfg_overlap`,
  `mm_groupnorm`.
* **Exact savings** skip work whose result the original throws away or recomputes unchanged. They
  stay within floating-point tolerance of compat mode (tests/test_aniportrait_pipeline.py checks
  each against the oracle's fixtures): `reference_cond_only`, `pose_cache`, `vae_decode_batch`.

`AniPortraitConfig.compat()` is the original exactly (bank rounded to fp16 included);
`AniPortraitConfig()` is the same numerics with the exact savings switched on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from a2pcli.errors import InputError

# configs/inference/inference_v2.yaml: noise_scheduler_kwargs (DDIMScheduler).
INFERENCE_V2_SCHEDULER_KWARGS: dict = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}

# The pipeline hard-codes SD's latent scale (pipeline_pose2vid_long.py: `* 0.18215`, `1 / 0.18215 *`).
VAE_SCALE = 0.18215

POSE_BN_MODES = ("batch", "running")
POSE_INPUT_SCALES = ("uint8_quirk", "unit")
WINDOW_MODES = ("closed_loop", "no_wrap")
NOCFG_OVERLAP_MODES = ("sum", "mean")
SCHEDULERS = ("ddim", "dpmpp", "unipc")
WINDOW_BATCH = 2  # context windows per denoiser call (benchmarks/README.md: 3 % faster per step than 1 on an H200)
DTYPES = ("fp16", "bf16", "fp32", "fp64")


@dataclass
class AniPortraitConfig:
    # ---- sampling (scripts/audio2vid.py argparse defaults) -------------------------------------
    steps: int = 25
    """`--steps`: DDIM steps (trailing spacing: 999, 959, ..., 39)."""
    guidance_scale: float = 3.5
    """`--cfg`: classifier-free guidance on the v-prediction, `u + s (c - u)`. CFG is on when > 1;
    the uncond branch has a zero CLIP embedding *and* no reference attention."""
    seed: int = 42
    """`--seed`: initial latents are `torch.randn` from `torch.manual_seed(seed)` on CPU, drawn in the
    model dtype, shape (1, 4, N, H/8, W/8)."""
    width: int = 512
    height: int = 512
    fps: int = 30
    """Audio2Mesh runs at 30 fps; audio2vid writes the video at 30 fps."""
    fi_step: int = 3
    """`--fi_step` of the `-acc` frame interpolation (diffusion on every fi_step-th pose frame). Not
    used by the sampler; kept for the front-ends."""
    accelerate: bool = False
    """`-acc`: off by default in the scripts."""
    dtype: str = "fp16"
    """`weight_dtype: fp16` in the prompt configs. Tests use fp64."""
    eta: float = 0.0
    """DDIM eta (the pipeline's default 0: deterministic)."""

    # ---- context windows (Pose2VideoPipeline.__call__ defaults; the scripts never override them) -
    context_frames: int = 16
    context_overlap: int = 4
    context_stride: int = 1
    """Reduced to min(stride, ...) = 1 by `uniform`; anything > 1 adds strided windows."""
    windows: str = "closed_loop"
    """"closed_loop" (compat): windows start at 0, 12, 24, ... < N and wrap modulo N, so the clip's end
    is denoised together with frames 0, 1, ...; "no_wrap": same stride, the last window aligned to
    N - context_frames, no wrap-around."""

    # ---- scheduler -----------------------------------------------------------------------------
    scheduler: str = "ddim"
    """"ddim" (compat); "dpmpp" (DPMSolverMultistepScheduler, dpmsolver++ order 2) and "unipc"
    (UniPCMultistepScheduler) with the same betas, v-prediction, zero-SNR and trailing spacing:
    fewer steps, not numerically equivalent."""
    scheduler_kwargs: dict = field(default_factory=lambda: dict(INFERENCE_V2_SCHEDULER_KWARGS))

    # ---- compat flags --------------------------------------------------------------------------
    pose_bn: str = "batch"
    """PoseGuider BatchNorm: "batch" (compat: the scripts never call .eval(), so every BatchNorm
    normalises with the statistics of the current window's frames) or "running" (the checkpoint's
    running statistics, i.e. eval mode; a different output)."""
    pose_input_scale: str = "uint8_quirk"
    """Pose-image values fed to the PoseGuider: "uint8_quirk" (compat: diffusers 0.24's
    VaeImageProcessor never divides uint8 numpy input by 255, so pixels arrive as 2*u8 - 1 in
    [-1, 509]) or "unit" ((u8/255 - 0.5)/0.5 in [-1, 1], as in training)."""
    bank_fp16_round: bool = True
    """ReferenceAttentionControl.update casts the reference bank to fp16 unconditionally (compat).
    Only matters for fp32/fp64 runs; False keeps the bank in the model dtype."""
    nocfg_overlap: str = "sum"
    """Without CFG (guidance_scale <= 1) the original never divides by the window counter, so frames
    covered by two windows get the *sum* of both predictions ("sum", compat). "mean" averages, as
    the CFG path does."""
    mm_groupnorm: str = "per_frame"
    """Motion-module GroupNorm statistics: per frame as in AnimateDiff/AniPortrait (compat). Owned by
    the denoiser builder (unet.py); recorded here so a run's settings are complete."""

    # ---- exact savings (within fp tolerance of compat) ------------------------------------------
    reference_cond_only: bool = True
    """Write the reference bank with batch 1 (CLIP-conditioned row only). The uncond rows never read
    the bank, so the original's uncond write is wasted work."""
    pose_cache: bool = True
    """Run the PoseGuider once per window (on one CFG copy) and reuse its features at every step.
    Exact: the windows and pose frames do not change between steps, and with batch-statistics
    BatchNorm the output depends only on the window's frames (the duplicated CFG batch has the same
    statistics up to rounding)."""
    vae_decode_batch: int = 8
    """Frames per VAE decode call; 1 is the original's one-frame-at-a-time loop."""
    window_batch: int = WINDOW_BATCH
    """Context windows per denoiser call: the windows of a step all read the latents as they were
    at the step's start, so several can run as one batch (larger matrix products, fewer calls);
    1 is the original's one window per call. Each window adds its activations to the peak memory."""
    park_reference: bool = True
    """On a GPU, move CLIP and the reference UNet to (pinned) host memory once the reference bank is
    written, and back at the next render: the denoising loop never uses them."""

    # ---- memory (`--low-vram`): same numbers, less GPU memory, a little slower ------------------
    sequential_cfg: bool = False
    """Run the uncond and cond halves of each window as two denoiser calls of batch 1 instead of one
    of batch 2 (the uncond half never reads the reference, so the results are the same)."""
    offload: bool = False
    """Move the CLIP encoder, the reference UNet and the VAE to the CPU once the reference is
    written (the VAE comes back to decode): only the denoiser and the PoseGuider stay on the GPU
    while sampling."""

    # --------------------------------------------------------------------------------------------
    @classmethod
    def compat(cls, **overrides) -> "AniPortraitConfig":
        """The original's behaviour exactly: no savings, bank rounded to fp16."""
        base = dict(reference_cond_only=False, pose_cache=False, vae_decode_batch=1, bank_fp16_round=True,
                    window_batch=1)
        base.update(overrides)
        return cls(**base)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def torch_dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                "fp64": torch.float64}[self.dtype]

    def replace(self, **changes) -> "AniPortraitConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "AniPortraitConfig":
        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}",
                                 subject="aniportrait config")

        choice("pose_bn", POSE_BN_MODES)
        choice("pose_input_scale", POSE_INPUT_SCALES)
        choice("windows", WINDOW_MODES)
        choice("nocfg_overlap", NOCFG_OVERLAP_MODES)
        choice("scheduler", SCHEDULERS)
        choice("dtype", DTYPES)
        choice("mm_groupnorm", ("per_frame",))
        for name in ("steps", "context_frames", "context_stride", "vae_decode_batch", "window_batch", "width",
                     "height", "fps"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, not {getattr(self, name)}",
                                 subject="aniportrait config")
        if not 0 <= self.context_overlap < self.context_frames:
            raise InputError(f"context_overlap must be in [0, context_frames), not {self.context_overlap}",
                             subject="aniportrait config")
        if self.width % 8 or self.height % 8:
            raise InputError(f"width and height must be multiples of 8, not {self.width}x{self.height}",
                             subject="aniportrait config")
        return self
