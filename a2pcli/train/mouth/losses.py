"""The mouth model's losses and crop metrics, the patch discriminator, and the model's crops for a batch."""

from __future__ import annotations

import numpy as np

from a2pcli.mouthnet import MouthConfig


def luma(x):
    """(B, 3, H, W) -> (B, 1, H, W) BT.601 luma."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def ssim_map(x, y, data_range: float = 255.0):
    """(B, 1, H, W) SSIM map of two luma images (Gaussian window 11, sigma 1.5, the standard constants)."""
    import torch
    from torch.nn import functional as F

    r, sigma = 5, 1.5
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    g = g / g.sum()

    def blur(a):
        a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(a, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def gradients(x):
    """Horizontal and vertical differences, (B, C, H, W-1) and (B, C, H-1, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def laplacian_var(x) -> np.ndarray:
    """(B, 1, H, W) luma -> (B,) variance of its 4-neighbour Laplacian (sharpness)."""
    lap = x[..., 1:-1, 2:] + x[..., 1:-1, :-2] + x[..., 2:, 1:-1] + x[..., :-2, 1:-1] - 4 * x[..., 1:-1, 1:-1]
    return lap.flatten(1).var(1).cpu().numpy()


def build_discriminator(channels: int):
    """A patch discriminator: (B, 3 + 2, S, S) crop and target lip masks -> (B, 1, S/4, S/4) logits."""
    from torch import nn

    c = channels

    def block(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1), nn.LeakyReLU(0.2, inplace=True)]

    return nn.Sequential(*block(5, c, 1), *block(c, c, 2), *block(c, 2 * c, 2), *block(2 * c, 2 * c, 1),
                         nn.Conv2d(2 * c, 1, 3, 1, 1))


def composite(net, b: dict, cfg: MouthConfig):
    """The model's crops (B, 3, S, S) 0..255 and its painted region (B, 1, S, S) for batch `b`."""
    from a2pcli.mouthnet import assemble, paint_region

    region = paint_region(b["lips"], b["interior"], cfg) * b["strength"].view(-1, 1, 1, 1)
    delta = net(assemble(b["warped"], b["lips"], b["interior"], b["portrait"])) * 255.0
    return b["warped"] + region * delta, region


def image_losses(out, truth, region) -> dict:
    """L1, 1 - SSIM and gradient L1, each inside the painted region (0..1 units)."""
    wsum = region.sum().clamp(min=1.0)
    d = (out - truth) / 255.0
    l1 = (d.abs().mean(1, keepdim=True) * region).sum() / wsum
    ssim = ((1 - ssim_map(luma(out), luma(truth))) * region).sum() / wsum
    (ox, oy), (tx, ty) = gradients(out / 255.0), gradients(truth / 255.0)
    grad = (((ox - tx).abs().mean(1, keepdim=True) * region[..., :, 1:]).sum()
            + ((oy - ty).abs().mean(1, keepdim=True) * region[..., 1:, :]).sum()) / (2 * wsum)
    return {"l1": l1, "ssim": ssim, "grad": grad}


def disc_input(crops, lips):
    """The discriminator's input: crops (B, 3, S, S) 0..255 in -1..1 with the target lip masks (B, 2, S, S)."""
    import torch

    return torch.cat([crops / 127.5 - 1, lips], 1)
