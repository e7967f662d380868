"""AniPortrait's PoseGuider (src/models/pose_guider.py), on plain torch layers plus diffusers'
Transformer2DModel, with the checkpoint's key names unchanged (pose_guider.pth loads strictly).

Structure (c = noise_latent_channels, 320 at full size):

    conv_layers   8 x [Conv, BatchNorm, ReLU]: 3 -> 128 channels, three stride-2 4x4 convs (/8)
    final_proj    Conv1x1 128 -> c, times the scalar parameter `scale`          -> fea[0]  (c,   /8)
    conv_layers_1 [Conv3x3 c->c, BN, ReLU, Conv3x3/s2 c->c, BN, ReLU]; cross_attn1 -> fea[1]  (c,   /16)
    conv_layers_2 same, c -> 2c;                                       cross_attn2 -> fea[2]  (2c,  /32)
    conv_layers_3 same, 2c -> 4c;                                      cross_attn3 -> fea[3]  (4c,  /64)
    conv_layers_4 [Conv3x3 4c->4c, BN, ReLU];                          cross_attn4 -> fea[4]  (4c,  /64)

`cross_attn*` are `Transformer2DModel(in_channels=...)` with the hard-coded 16 heads x 88 and no
cross-attention dimension: diffusers then builds no `attn2`, and the block's attn1 is plain
self-attention. So the reference pose (`ref_x`), which the original computes and passes as
`encoder_hidden_states`, has **no effect** on the output; `forward` accepts it and ignores it.

BatchNorm: the scripts never call `.eval()` on the PoseGuider, so AniPortrait normalises with the
*batch statistics* of the current window's frames ("batch", compat). "running" uses the
checkpoint's running statistics (eval mode). Neither mode updates the running statistics here
(the original's train-mode calls do, but nothing reads them in batch mode).

Input scale: AniPortrait feeds uint8 numpy frames through diffusers 0.24's VaeImageProcessor, which
does not divide them by 255, so pixels arrive as 2*u8 - 1 in [-1, 509] (`pose_tensor(...,
"uint8_quirk")`); training used [-1, 1] (`"unit"`). With batch-statistics BatchNorm the first
conv+BN cancels most of the scaling, but not all (zero-padded borders; and with tiny weights the
batch variance of [-1, 1] input can fall below eps). Reproduce the quirk to match AniPortrait.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2pcli.errors import ModelError

HEADS = 16
HEAD_DIM = 88


class PoseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose statistics source is a switch (`use_batch_stats`), independent of
    train/eval mode, and which never updates its running statistics."""

    use_batch_stats: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_batch_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _block(cin: int, cout: int, k: int, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding), PoseBatchNorm2d(cout), nn.ReLU()]


class PoseGuider(nn.Module):
    def __init__(self, noise_latent_channels: int = 320, use_ca: bool = True):
        super().__init__()
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        c = noise_latent_channels
        self.use_ca = use_ca
        self.conv_layers = nn.Sequential(
            *_block(3, 3, 3), *_block(3, 16, 4, 2),
            *_block(16, 16, 3), *_block(16, 32, 4, 2),
            *_block(32, 32, 3), *_block(32, 64, 4, 2),
            *_block(64, 64, 3), *_block(64, 128, 3),
        )
        self.final_proj = nn.Conv2d(128, c, kernel_size=1)
        self.conv_layers_1 = nn.Sequential(*_block(c, c, 3), *_block(c, c, 3, 2))
        self.conv_layers_2 = nn.Sequential(*_block(c, c, 3), *_block(c, 2 * c, 3, 2))
        self.conv_layers_3 = nn.Sequential(*_block(2 * c, 2 * c, 3), *_block(2 * c, 4 * c, 3, 2))
        self.conv_layers_4 = nn.Sequential(*_block(4 * c, 4 * c, 3))
        if use_ca:
            def t2d(ch):
                return Transformer2DModel(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=ch)

            self.cross_attn1 = t2d(c)
            self.cross_attn2 = t2d(2 * c)
            self.cross_attn3 = t2d(4 * c)
            self.cross_attn4 = t2d(4 * c)
        self.scale = nn.Parameter(torch.ones(1) * 2)

    # -- BatchNorm mode ---------------------------------------------------------------------------
    @property
    def bn_mode(self) -> str:
        modes = {m.use_batch_stats for m in self.modules() if isinstance(m, PoseBatchNorm2d)}
        return "batch" if modes == {True} else "running" if modes == {False} else "mixed"

    def set_bn_mode(self, mode: str) -> "PoseGuider":
        if mode not in ("batch", "running"):
            raise ValueError(f"BatchNorm mode must be 'batch' or 'running', not {mode!r}")
        for m in self.modules():
            if isinstance(m, PoseBatchNorm2d):
                m.use_batch_stats = mode == "batch"
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def device(self) -> torch.device:
        return self.scale.device

    # -- forward ----------------------------------------------------------------------------------
    def _attn(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self.use_ca:
            return x
        return getattr(self, name)(x, return_dict=False)[0]

    def forward(self, x: torch.Tensor, ref_x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """x: (b, 3, f, H, W) pose frames -> 5 feature maps (b, c_k, f, h_k, w_k). `ref_x` is
        accepted for the original's signature and has no effect (see the module docstring)."""
        del ref_x
        b, c, f, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * f, c, h, w)  # "b c f h w -> (b f) c h w"
        fea = []
        x = self.final_proj(self.conv_layers(x)) * self.scale
        fea.append(x)
        x = self._attn("cross_attn1", self.conv_layers_1(x))
        fea.append(x)
        x = self._attn("cross_attn2", self.conv_layers_2(x))
        fea.append(x)
        x = self._attn("cross_attn3", self.conv_layers_3(x))
        fea.append(x)
        x = self._attn("cross_attn4", self.conv_layers_4(x))
        fea.append(x)
        return [t.reshape(b, f, *t.shape[1:]).transpose(1, 2) for t in fea]


def build_pose_guider(config: dict, state_dict: dict, dtype=torch.float32, device="cpu",
                      bn_mode: str = "batch") -> PoseGuider:
    """A PoseGuider from its config (`{"noise_latent_channels": c, "use_ca": True}`) and a
    pose_guider.pth dict, loaded strictly. Parameters are assigned without a copy where dtype and
    device already match (the model never writes them); buffers are copied."""
    with torch.device("meta"):
        model = PoseGuider(int(config.get("noise_latent_channels", 320)), bool(config.get("use_ca", True)))
    expected = set(model.state_dict().keys())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ModelError(f"pose guider checkpoint does not match the model: {len(missing)} missing keys "
                         f"({', '.join(missing[:3])}...), {len(unexpected)} unexpected "
                         f"({', '.join(unexpected[:3])}...)", subject="pose_guider.pth",
                         remedy="use AniPortrait's released pose_guider.pth")
    buffers = {n for n, _ in model.named_buffers()}
    sd = {}
    for k, v in state_dict.items():
        if v.is_floating_point():
            v = v.to(device=device, dtype=dtype)
        else:
            v = v.to(device=device)
        sd[k] = v.clone() if k in buffers else v
    model.load_state_dict(sd, strict=True, assign=True)
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise ModelError(f"pose guider tensor {n} was not loaded", subject="pose_guider.pth")
    model.eval().requires_grad_(False)
    return model.set_bn_mode(bn_mode)


# -- input scaling ------------------------------------------------------------------------------

def _frames_array(frames) -> np.ndarray:
    arr = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"pose frames must be uint8 (H, W, 3) images, got {arr.dtype} {arr.shape}")
    return arr


def pose_tensor(frames, scale: str = "uint8_quirk", height: int | None = None, width: int | None = None,
                dtype=torch.float32, device="cpu") -> torch.Tensor:
    """uint8 (H, W, 3) frames (a list, or an (N, H, W, 3) array; channel order kept as drawn) ->
    (1, 3, N, H, W) PoseGuider input.

    "uint8_quirk": 2*u8 - 1 in [-1, 509], what diffusers 0.24's VaeImageProcessor(do_normalize=True)
    gives for uint8 numpy input (the pipeline's path). "unit": (u8/255 - 0.5)/0.5 in [-1, 1], the
    training normalisation. Frames of another size are resized to (height, width) with nearest
    neighbour, as the processor's tensor resize does."""
    arr = _frames_array(frames)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).to(torch.float64)  # (N,3,H,W)
    if height is not None and width is not None and tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width))
    if scale == "uint8_quirk":
        x = 2.0 * x - 1.0
    elif scale == "unit":
        x = (x / 255.0 - 0.5) / 0.5
    else:
        raise ValueError(f"unknown pose input scale {scale!r} (uint8_quirk, unit)")
    return x.permute(1, 0, 2, 3).unsqueeze(0).to(device=device, dtype=dtype)
