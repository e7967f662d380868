"""The CLIP image encoder of AniPortrait (lambdalabs sd-image-variations' ViT-L/14 with projection),
on transformers' CLIPVisionModelWithProjection.

Preprocessing is the pipeline's: `ref.resize((224, 224))` (PIL's default resampling, bicubic), then a
default `CLIPImageProcessor` (shortest edge 224, centre crop 224, /255, OpenAI mean/std, float32).
The conditioning is `image_embeds` (1, D) -> (1, 1, D); the uncond embedding is zeros.

Checkpoint keys: AniPortrait's image_encoder was saved by transformers 4.30, whose state dict
carries `vision_model.embeddings.position_ids` (arange). Newer transformers make that buffer
non-persistent; the loader checks it equals arange and drops it. All other names are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from a2pcli.errors import ModelError

POSITION_IDS = "vision_model.embeddings.position_ids"


def convert_clip_state_dict(state_dict: dict, model_keys: set) -> dict:
    """Map a transformers-4.30 CLIPVisionModelWithProjection state dict to the installed
    transformers' names (drop a persistent `position_ids` the model no longer stores)."""
    sd = dict(state_dict)
    if POSITION_IDS in sd and POSITION_IDS not in model_keys:
        pos = sd.pop(POSITION_IDS)
        if not torch.equal(pos.reshape(-1).long(), torch.arange(pos.numel())):
            raise ModelError("image encoder position_ids are not 0..n-1", subject="image_encoder",
                             remedy="use the sd-image-variations image_encoder weights")
    return sd


def build_image_encoder(config: dict, state_dict: dict, dtype=torch.float32, device="cpu"):
    """CLIPVisionModelWithProjection from a CLIPVisionConfig dict and a state dict (transformers
    4.30 names accepted), loaded strictly, in eval mode."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    model = CLIPVisionModelWithProjection(cfg).to(dtype=dtype)  # before loading: no float32 round trip
    sd = convert_clip_state_dict(state_dict, set(model.state_dict().keys()))
    expected = set(model.state_dict().keys())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ModelError(f"image encoder weights do not match the model: {len(missing)} missing "
                         f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})",
                         subject="image_encoder", remedy="use the sd-image-variations image_encoder weights")
    model.load_state_dict(sd, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _processor():
    try:  # transformers >= 5: the PIL backend, without the torchvision fallback warning
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil()
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor()


def clip_pixel_values(ref_image) -> torch.Tensor:
    """(1, 3, 224, 224) float32 CLIP input of the reference image, as the pipeline makes it."""
    from PIL import Image

    if not isinstance(ref_image, Image.Image):
        ref_image = Image.fromarray(np.asarray(ref_image))
    if ref_image.mode != "RGB":
        ref_image = ref_image.convert("RGB")
    return _processor().preprocess(ref_image.resize((224, 224)), return_tensors="pt").pixel_values


@torch.no_grad()
def clip_image_embeds(image_encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """(1, 3, 224, 224) -> (1, D) projected image embeddings."""
    p = next(image_encoder.parameters())
    return image_encoder(pixel_values.to(device=p.device, dtype=p.dtype)).image_embeds
