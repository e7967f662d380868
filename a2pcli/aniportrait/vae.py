"""The VAE side of AniPortrait's pipeline on diffusers' AutoencoderKL.

* Reference image -> VAE input: PIL resize to (W, H) with Lanczos, /255 in float32, 2x - 1
  (diffusers' VaeImageProcessor PIL path, as the pipeline uses it).
* Encode: `latent_dist.mean * 0.18215` (the posterior mean, not a sample; the scale is hard-coded).
* Decode: `latents / 0.18215`, frames laid out (b f), `(x/2 + 0.5).clamp(0, 1)`, float32. The
  original decodes one frame per call; `batch` frames per call give the same numbers (the VAE
  decoder has no cross-frame operation).
"""

from __future__ import annotations

import numpy as np
import torch

from a2pcli.aniportrait.config import VAE_SCALE
from a2pcli.errors import ModelError


def build_vae(config: dict, state_dict: dict, dtype=torch.float32, device="cpu"):
    """diffusers AutoencoderKL from a config dict (AutoencoderKL's __init__ arguments, e.g. the
    sd-vae-ft-mse config.json) and a diffusers-format state dict, loaded strictly, in eval mode."""
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(**cfg)
    expected = set(vae.state_dict().keys())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ModelError(f"VAE weights do not match the model: {len(missing)} missing "
                         f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})",
                         subject="vae", remedy="use the sd-vae-ft-mse AutoencoderKL weights")
    sd = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
          for k, v in state_dict.items()}
    vae.load_state_dict(sd, strict=True, assign=True)
    for n, t in list(vae.named_parameters()) + list(vae.named_buffers()):
        if t.is_meta:
            raise ModelError(f"VAE tensor {n} was not loaded", subject="vae")
    return vae.eval().requires_grad_(False)


def as_rgb_pil(image):
    """A PIL RGB image from a PIL image (converted) or a uint8 (H, W, 3) RGB array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"reference image must be a PIL image or uint8 RGB (H, W, 3), got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


def ref_image_tensor(image, width: int, height: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(1, 3, H, W) VAE input of the reference image: Lanczos resize to (width, height), values
    /255 in float32, then 2x - 1 (VaeImageProcessor.preprocess on a PIL image)."""
    from PIL import Image

    pil = as_rgb_pil(image).resize((width, height), resample=Image.LANCZOS)
    x = np.asarray(pil).astype(np.float32) / 255.0
    x = 2.0 * x - 1.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])).to(device=device, dtype=dtype)


@torch.no_grad()
def encode_reference(vae, image_tensor: torch.Tensor, scale: float = VAE_SCALE) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> (1, 4, H/8, W/8): posterior mean times 0.18215."""
    return vae.encode(image_tensor).latent_dist.mean * scale


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch: int = 1, scale: float = VAE_SCALE,
                   progress=None, float32: bool = True) -> torch.Tensor:
    """(b, 4, f, h, w) latents -> (b, 3, f, 8h, 8w) video in [0, 1] on the latents' device, float32
    as the original returns it (`float32=False` keeps the VAE dtype). `batch` frames per decoder call
    (1: the original's loop). `progress(done, total)` after each call."""
    b, c, f, h, w = latents.shape
    x = (latents / scale).transpose(1, 2).reshape(b * f, c, h, w)
    out = []
    total = x.shape[0]
    batch = max(1, int(batch))
    for i in range(0, total, batch):
        out.append(vae.decode(x[i:i + batch]).sample)
        if progress is not None:
            progress(min(i + batch, total), total)
    video = torch.cat(out)
    video = video.reshape(b, f, *video.shape[1:]).transpose(1, 2)
    video = (video / 2 + 0.5).clamp(0, 1)
    return video.float() if float32 else video
