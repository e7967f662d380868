"""GPU execution settings of the diffusion renderer: measured options that change speed, not results
beyond float rounding (benchmarks/README.md has the figures).

    speed_settings(models, channels_last=False, cudnn_benchmark=False, compile=False)
"""

from __future__ import annotations


def speed_settings(models, channels_last: bool = False, cudnn_benchmark: bool = False, compile: bool = False) -> None:
    """Optional cuDNN autotuning (off: it gains 1 % per window-step on an H100 but its searches cost
    several seconds per process, 5 s for the VAE decoder's shapes alone, more than a 90-frame render
    gains), optional `torch.compile` of the denoiser (27 % faster per window-step; see
    `compile_denoiser`) and, optionally, NHWC weights for the convolution-heavy
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
    if compile:
        compile_denoiser(models)


def compile_denoiser(models, mode: str | None = None) -> int:
    """`torch.compile` the denoising UNet block by block (regional compilation: each down, mid and up
    block is its own graph, so compiling takes a fraction of a whole-model compile and a graph break
    in one block cannot spread). Shapes are static: one compile per window length and batch, paid by
    the first window; inductor's on-disk cache makes later processes faster. Returns the number of
    compiled blocks."""
    unet = models.denoiser.unet
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        block.compile(dynamic=False, mode=mode)
    return len(blocks)
