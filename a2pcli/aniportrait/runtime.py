"""GPU execution settings of the diffusion renderer: measured options that change speed, not results
beyond float rounding (benchmarks/README.md has the figures).

    speed_settings(models, channels_last=False, cudnn_benchmark=True)
"""

from __future__ import annotations


def speed_settings(models, channels_last: bool = False, cudnn_benchmark: bool = True) -> None:
    """cuDNN autotuning (the UNet's convolutions run at a handful of fixed shapes, so the one-time
    search pays back at once; 1 % on an H100) and, optionally, NHWC weights for the convolution-heavy
    networks (measured 11 % *slower* on an H100 with torch 2.11: the per-frame GroupNorms and the
    motion modules' reshapes convert back and forth, so it is off by default)."""
    import torch

    if models.device.type != "cuda":
        return
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if channels_last:
        for net in (models.denoiser, models.reference_unet, models.pose_guider, models.vae):
            net.to(memory_format=torch.channels_last)
