"""AniPortrait checkpoint keys -> diffusers model keys (pure; no model is built here).

AniPortrait ships three UNet checkpoints (design note §3):

- `reference_unet.pth`: the SD1.5 `UNet2DConditionModel` keys minus `conv_norm_out.*` and
  `conv_out.*` (AniPortrait's reference UNet has no output head). Identity mapping onto our reference
  UNet, which drops the same four tensors.
- `denoising_unet.pth`: exactly the SD1.5 UNet keys. They load into diffusers' `UNetMotionModel`
  without renaming (every spatial key has the same name and shape).
- `motion_module.pth`: AnimateDiff-style keys with full UNet paths
  (`<block>.motion_modules.<j>.temporal_transformer.…`), renamed as diffusers'
  `convert_animatediff_motion_module_to_diffusers.py` does, see `motion_key_to_diffusers`.
  Each module holds two `attention_blocks.{0,1}.pos_encoder.pe` sinusoid buffers; diffusers has one
  shared `transformer_blocks.<n>.pos_embed.pe`. Both checkpoint copies are checked against the
  recomputed sinusoid and the first is loaded (AniPortrait uses the loaded buffer too); where the
  checkpoint has none, the sinusoid is recomputed in float64 (what AniPortrait's constructor makes).

Every conversion is strict: each checkpoint key is consumed exactly once, and against the target
model's `{key: shape}` a missing key, an unexpected key or a shape mismatch raises `ModelError` naming
the key in the checkpoint's own spelling and the file it belongs to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from a2pcli.errors import ModelError

REFERENCE_FILE = "reference_unet.pth"
DENOISING_FILE = "denoising_unet.pth"
MOTION_FILE = "motion_module.pth"

#: SD1.5 UNet keys that AniPortrait's reference UNet (and ours) does not have.
REFERENCE_UNET_ABSENT = ("conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias")

#: Largest |checkpoint pe - float64 sinusoid| accepted (covers sinusoids saved in float16).
PE_ATOL = 2e-3

_MODULE = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+"
_MOTION_KEY = re.compile(rf"^(?P<module>{_MODULE})\.temporal_transformer\.(?P<rest>.+)$")
_DIFFUSERS_MOTION_KEY = re.compile(rf"^(?P<module>{_MODULE})\.(?P<rest>.+)$")
_BLOCK = r"transformer_blocks\.\d+"
# (AniPortrait pattern, diffusers template) inside one temporal transformer
_RENAMES = (
    (re.compile(r"^(norm|proj_in|proj_out)\.(weight|bias)$"), r"\1.\2"),
    (re.compile(rf"^({_BLOCK})\.attention_blocks\.0\.(to_q|to_k|to_v)\.weight$"), r"\1.attn1.\2.weight"),
    (re.compile(rf"^({_BLOCK})\.attention_blocks\.1\.(to_q|to_k|to_v)\.weight$"), r"\1.attn2.\2.weight"),
    (re.compile(rf"^({_BLOCK})\.attention_blocks\.0\.to_out\.0\.(weight|bias)$"), r"\1.attn1.to_out.0.\2"),
    (re.compile(rf"^({_BLOCK})\.attention_blocks\.1\.to_out\.0\.(weight|bias)$"), r"\1.attn2.to_out.0.\2"),
    (re.compile(rf"^({_BLOCK})\.norms\.0\.(weight|bias)$"), r"\1.norm1.\2"),
    (re.compile(rf"^({_BLOCK})\.norms\.1\.(weight|bias)$"), r"\1.norm2.\2"),
    (re.compile(rf"^({_BLOCK})\.ff_norm\.(weight|bias)$"), r"\1.norm3.\2"),
    (re.compile(rf"^({_BLOCK})\.ff\.net\.0\.proj\.(weight|bias)$"), r"\1.ff.net.0.proj.\2"),
    (re.compile(rf"^({_BLOCK})\.ff\.net\.2\.(weight|bias)$"), r"\1.ff.net.2.\2"),
)
_PE = re.compile(rf"^({_BLOCK})\.attention_blocks\.[01]\.pos_encoder\.pe$")
# diffusers -> AniPortrait, for naming a missing tensor in the checkpoint's spelling
_INVERSE = (
    (re.compile(r"^(norm|proj_in|proj_out)\.(weight|bias)$"), r"\1.\2"),
    (re.compile(rf"^({_BLOCK})\.attn1\.(.+)$"), r"\1.attention_blocks.0.\2"),
    (re.compile(rf"^({_BLOCK})\.attn2\.(.+)$"), r"\1.attention_blocks.1.\2"),
    (re.compile(rf"^({_BLOCK})\.norm1\.(.+)$"), r"\1.norms.0.\2"),
    (re.compile(rf"^({_BLOCK})\.norm2\.(.+)$"), r"\1.norms.1.\2"),
    (re.compile(rf"^({_BLOCK})\.norm3\.(.+)$"), r"\1.ff_norm.\2"),
    (re.compile(rf"^({_BLOCK})\.pos_embed\.pe$"), r"\1.attention_blocks.0.pos_encoder.pe"),
    (re.compile(rf"^({_BLOCK})\.(ff\..+)$"), r"\1.\2"),
)

_REMEDY_FILE = "use the unmodified {file} of the AniPortrait release; re-download it if it was edited or truncated"


def is_motion_key(key: str) -> bool:
    """AniPortrait's own split: `motion_module.pth` holds exactly the keys containing `motion_module`."""
    return "motion_module" in key


def is_pe_key(key: str) -> bool:
    m = _MOTION_KEY.match(key)
    return bool(m and _PE.match(m.group("rest")))


def motion_key_to_diffusers(key: str) -> str | None:
    """The diffusers `UNetMotionModel` key of one AniPortrait motion key, or None for the
    `pos_encoder.pe` buffers (handled by `convert_motion_module`). Raises `KeyError` for a key that
    is not a motion-module key diffusers can express."""
    m = _MOTION_KEY.match(key)
    if not m:
        raise KeyError(key)
    rest = m.group("rest")
    if _PE.match(rest):
        return None
    for pattern, template in _RENAMES:
        if pattern.match(rest):
            return f"{m.group('module')}.{pattern.sub(template, rest)}"
    raise KeyError(key)


def diffusers_to_motion_key(key: str) -> str:
    """Inverse of `motion_key_to_diffusers` (`pos_embed.pe` -> the `attention_blocks.0` copy); the key
    unchanged when it is not a diffusers motion key."""
    m = _DIFFUSERS_MOTION_KEY.match(key)
    if not m:
        return key
    rest = m.group("rest")
    for pattern, template in _INVERSE:
        if pattern.match(rest):
            return f"{m.group('module')}.temporal_transformer.{pattern.sub(template, rest)}"
    return key


def sinusoid(length: int, channels: int, *, dtype=None, device=None):
    """(1, length, channels) positional encoding of AnimateDiff/AniPortrait and diffusers'
    `SinusoidalPositionalEmbedding`: pe[0,p,2i] = sin(p·exp(2i·(-ln 10000)/C)), pe[0,p,2i+1] = cos(…),
    computed in `dtype` (default float64, as AniPortrait's float64 build does)."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    position = torch.arange(length, dtype=dtype, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, channels, 2, dtype=dtype, device=device) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels, dtype=dtype, device=device)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


def _names(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _unexpected(file: str, keys, why: str = "") -> ModelError:
    return ModelError(
        f"unexpected key{'s' if len(keys) > 1 else ''} {_names(keys)}{why}",
        subject=file,
        remedy=_REMEDY_FILE.format(file=file),
    )


def _check_pe(file: str, key: str, tensor) -> None:
    if tensor.device.type == "meta":
        return
    import torch

    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ModelError(
            f"key {key!r} has shape {tuple(tensor.shape)}, expected (1, length, channels)",
            subject=file,
            remedy=_REMEDY_FILE.format(file=file),
        )
    ref = sinusoid(tensor.shape[1], tensor.shape[2], device=tensor.device)
    err = float((tensor.to(torch.float64) - ref).abs().max()) if tensor.numel() else 0.0
    if not err <= PE_ATOL:
        raise ModelError(
            f"key {key!r} is not the sinusoidal position encoding (max |diff| {err:.3g})",
            subject=file,
            remedy=_REMEDY_FILE.format(file=file),
        )


def convert_motion_module(state_dict: Mapping, *, file: str = MOTION_FILE) -> dict:
    """AniPortrait `motion_module.pth` dict -> diffusers keys. Every key must be a motion key that
    diffusers can express; the `pe` buffers are value-checked and become `pos_embed.pe`."""
    out: dict = {}
    bad = []
    pes: dict[str, list] = {}
    for key, tensor in state_dict.items():
        if not is_motion_key(key):
            bad.append(key)
            continue
        try:
            new = motion_key_to_diffusers(key)
        except KeyError:
            bad.append(key)
            continue
        if new is None:
            _check_pe(file, key, tensor)
            m = _MOTION_KEY.match(key)
            block = _PE.match(m.group("rest")).group(1)
            pes.setdefault(f"{m.group('module')}.{block}.pos_embed.pe", []).append((key, tensor))
            continue
        out[new] = tensor
    if bad:
        raise _unexpected(file, bad, " (not a motion-module key that diffusers' UNetMotionModel can express)")
    for new, found in pes.items():
        found.sort(key=lambda kt: kt[0])  # attention_blocks.0 first
        (k0, t0), *others = found
        for k1, t1 in others:
            if tuple(t1.shape) != tuple(t0.shape):
                raise ModelError(
                    f"keys {k0!r} and {k1!r} have different shapes {tuple(t0.shape)} and {tuple(t1.shape)}",
                    subject=file,
                    remedy=_REMEDY_FILE.format(file=file),
                )
        out[new] = t0
    return out


def check_state_dict(converted: Mapping, expected: Mapping, *, file: str, original=None) -> None:
    """Raise `ModelError` unless `converted` has exactly the keys of `expected` ({key: shape}) with
    equal shapes. `original(key)` gives the checkpoint spelling of a target key, for messages."""
    original = original or (lambda k: k)
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    if missing:
        names = [original(k) for k in missing]
        extra = f"; it has unexpected {_names([original(k) for k in unexpected])}" if unexpected else ""
        raise ModelError(
            f"missing key{'s' if len(names) > 1 else ''} {_names(names)}{extra}",
            subject=file,
            remedy=_REMEDY_FILE.format(file=file),
        )
    if unexpected:
        raise _unexpected(file, [original(k) for k in unexpected])
    for key, shape in expected.items():
        got = tuple(converted[key].shape)
        if got != tuple(shape):
            raise ModelError(
                f"key {original(key)!r} has shape {got}, expected {tuple(shape)} (a checkpoint for another "
                "model size or configuration?)",
                subject=file,
                remedy=_REMEDY_FILE.format(file=file),
            )


def convert_reference_unet(state_dict: Mapping, expected: Mapping | None = None, *,
                           file: str = REFERENCE_FILE) -> dict:
    """Identity mapping of `reference_unet.pth` (SD1.5 keys minus `REFERENCE_UNET_ABSENT`), checked
    against `expected` ({key: shape} of the reference UNet) when given."""
    out = dict(state_dict)
    head = [k for k in REFERENCE_UNET_ABSENT if k in out]
    if head:
        raise _unexpected(file, head, " (AniPortrait's reference UNet has no conv_norm_out/conv_out; "
                                      "is this a denoising or base UNet?)")
    if expected is not None:
        check_state_dict(out, expected, file=file)
    return out


def convert_denoising_unet(spatial: Mapping, motion: Mapping, expected: Mapping | None = None, *,
                           spatial_file: str = DENOISING_FILE, motion_file: str = MOTION_FILE) -> dict:
    """`denoising_unet.pth` (identity) + `motion_module.pth` (renamed) -> one `UNetMotionModel` dict.

    With `expected` ({key: shape} of the target model) the result is checked strictly; position
    encodings absent from the checkpoint are then recomputed (float64 sinusoid)."""
    motion_in_spatial = [k for k in spatial if is_motion_key(k)]
    if motion_in_spatial:
        raise _unexpected(spatial_file, motion_in_spatial, f" (motion-module keys belong in {motion_file})")
    out = dict(spatial)
    out.update(convert_motion_module(motion, file=motion_file))
    if expected is None:
        return out
    for key, shape in expected.items():
        if key.endswith(".pos_embed.pe") and key not in out and len(shape) == 3:
            out[key] = sinusoid(shape[1], shape[2])
    spatial_expected = {k: s for k, s in expected.items() if not is_motion_key(k)}
    motion_expected = {k: s for k, s in expected.items() if is_motion_key(k)}
    check_state_dict({k: v for k, v in out.items() if not is_motion_key(k)}, spatial_expected, file=spatial_file)
    check_state_dict({k: v for k, v in out.items() if is_motion_key(k)}, motion_expected, file=motion_file,
                     original=diffusers_to_motion_key)
    return out
