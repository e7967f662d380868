"""AniPortrait's reference UNet and denoising UNet on diffusers building blocks.

- Reference UNet: diffusers `UNet2DConditionModel` from the SD1.5-style config, without
  `conv_norm_out`/`conv_out` (AniPortrait's has none; its output is the last up block's output).
- Denoising UNet: diffusers `UNetMotionModel` (spatial SD1.5 layers + AnimateDiff motion modules,
  configured from AniPortrait's `unet_additional_kwargs` like a `MotionAdapter`) with four small pieces
  of our own (design note §0.2, §3.6):
  1. motion modules normalise each frame on its own (`PerFrameMotionTransformer`); diffusers' stock
     `AnimateDiffTransformer3D` takes GroupNorm statistics across the frames of the window;
  2. pose features are added after `conv_in` (the first skip tensor includes them) and after each
     down block (the block's skip tensors do not);
  3. reference attention: the 16 spatial self-attentions (`attn1`) of the cond rows use
     `[own tokens, reference-bank tokens]` as keys/values; uncond CFG rows use plain self-attention;
  4. the CLIP states (b, 1, D) are repeated per frame, batch-major.

The reference bank holds, per `BasicTransformerBlock` path (identical in both UNets, e.g.
`down_blocks.0.attentions.0.transformer_blocks.0`), the `norm1` output that the reference UNet feeds
its `attn1`, recorded by `write_reference` at t = 0.

Everything runs batched over frames (no Python loop over frames) with SDPA attention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from a2pcli.aniportrait import convert
from a2pcli.errors import ModelError

BLOCK_SUFFIX = ".transformer_blocks."


# --------------------------------------------------------------------------------------------
# configs


def _heads(config: Mapping) -> int | list:
    # SD1.5 configs use the legacy `attention_head_dim` for the number of heads (diffusers and
    # AniPortrait read it the same way).
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    return list(heads) if isinstance(heads, (list, tuple)) else heads


def unet2d_config(config: Mapping) -> dict:
    """The `UNet2DConditionModel` config (a plain copy; `_`-prefixed metadata dropped)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _unsupported(what: str) -> ModelError:
    return ModelError(
        f"unsupported AniPortrait UNet configuration: {what}",
        subject="unet_additional_kwargs",
        remedy="use the inference_v2.yaml settings that AniPortrait's released checkpoints were trained with",
    )


def motion_adapter_config(config: Mapping, additional_kwargs: Mapping) -> dict:
    """The diffusers `MotionAdapter` config equivalent to AniPortrait's `unet_additional_kwargs`."""
    a = dict(additional_kwargs)
    mk = dict(a.get("motion_module_kwargs", {}))
    n_blocks = len(config["block_out_channels"])
    checks = [
        (a.get("use_motion_module", False) is True, "use_motion_module must be true"),
        (a.get("motion_module_type", "Vanilla") == "Vanilla", "motion_module_type must be 'Vanilla'"),
        (not a.get("motion_module_decoder_only", False), "motion_module_decoder_only is not supported"),
        (list(a.get("motion_module_resolutions", [])) == [2**i for i in range(n_blocks)],
         f"motion_module_resolutions must cover every resolution {[2**i for i in range(n_blocks)]}"),
        (a.get("use_inflated_groupnorm", False) is True,
         "use_inflated_groupnorm must be true (resnet GroupNorm per frame)"),
        (not a.get("unet_use_cross_frame_attention", False), "unet_use_cross_frame_attention is not supported"),
        (not a.get("unet_use_temporal_attention", False), "unet_use_temporal_attention is not supported"),
        (list(mk.get("attention_block_types", [])) == ["Temporal_Self", "Temporal_Self"],
         "attention_block_types must be [Temporal_Self, Temporal_Self]"),
        (mk.get("temporal_position_encoding", False) is True, "temporal_position_encoding must be true"),
        (mk.get("temporal_attention_dim_div", 1) == 1, "temporal_attention_dim_div must be 1"),
    ]
    for ok, what in checks:
        if not ok:
            raise _unsupported(what)
    return {
        "block_out_channels": list(config["block_out_channels"]),
        "motion_layers_per_block": config["layers_per_block"],
        "motion_transformer_layers_per_block": mk.get("num_transformer_block", 1),
        "motion_mid_block_layers_per_block": 1,
        "motion_transformer_layers_per_mid_block": mk.get("num_transformer_block", 1),
        "motion_num_attention_heads": mk.get("num_attention_heads", 8),
        "motion_norm_num_groups": config.get("norm_num_groups", 32),
        "motion_max_seq_length": mk.get("temporal_position_encoding_max_len", 24),
        "use_motion_mid_block": bool(a.get("motion_module_mid_block", False)),
    }


def motion_unet_kwargs(config: Mapping, additional_kwargs: Mapping) -> dict:
    """`UNetMotionModel(**kwargs)` for AniPortrait's 3D UNet (2D config + additional kwargs)."""
    c = unet2d_config(config)
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim",
                "num_class_embeddings"):
        if c.get(key) is not None:
            raise _unsupported(f"{key}={c[key]!r}")
    if c.get("center_input_sample"):
        raise _unsupported("center_input_sample")
    if c.get("flip_sin_to_cos", True) is not True or c.get("freq_shift", 0) != 0:
        raise _unsupported("time embedding other than flip_sin_to_cos=true, freq_shift=0")
    if c.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise _unsupported(f"mid_block_type={c['mid_block_type']!r}")
    adapter = motion_adapter_config(c, additional_kwargs)
    if not adapter["use_motion_mid_block"]:
        raise _unsupported("motion_module_mid_block must be true")

    def motion(types, kind):
        out = []
        for t in types:
            if t in (f"CrossAttn{kind}Block2D", f"CrossAttn{kind}Block3D"):
                out.append(f"CrossAttn{kind}BlockMotion")
            elif t in (f"{kind}Block2D", f"{kind}Block3D"):
                out.append(f"{kind}BlockMotion")
            else:
                raise _unsupported(f"block type {t!r}")
        return out

    return {
        "in_channels": c.get("in_channels", 4),
        "out_channels": c.get("out_channels", 4),
        "down_block_types": motion(c["down_block_types"], "Down"),
        "up_block_types": motion(c["up_block_types"], "Up"),
        "block_out_channels": list(c["block_out_channels"]),
        "layers_per_block": c.get("layers_per_block", 2),
        "downsample_padding": c.get("downsample_padding", 1),
        "mid_block_scale_factor": c.get("mid_block_scale_factor", 1),
        "act_fn": c.get("act_fn", "silu"),
        "norm_num_groups": c.get("norm_num_groups", 32),
        "norm_eps": c.get("norm_eps", 1e-5),
        "cross_attention_dim": c.get("cross_attention_dim", 1280),
        "transformer_layers_per_block": c.get("transformer_layers_per_block", 1),
        "use_linear_projection": c.get("use_linear_projection", False),
        "num_attention_heads": _heads(c),
        "temporal_transformer_layers_per_block": adapter["motion_transformer_layers_per_block"],
        "temporal_transformer_layers_per_mid_block": adapter["motion_transformer_layers_per_mid_block"],
        "motion_max_seq_length": adapter["motion_max_seq_length"],
        "motion_num_attention_heads": adapter["motion_num_attention_heads"],
        "use_motion_mid_block": True,
    }


# --------------------------------------------------------------------------------------------
# loading


def _shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _materialize(model: nn.Module, state_dict: Mapping, dtype, device) -> nn.Module:
    # `model` was built on the meta device: adopt the converted tensors, then cast/move once.
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    nn.Module.to(model, device=device, dtype=dtype)  # (ModelMixin.to only adds a float32-modules warning)
    model.eval()
    model.requires_grad_(False)
    return model


def transformer_block_paths(model: nn.Module) -> list[str]:
    """Paths of the spatial `BasicTransformerBlock`s (those inside `attentions`; not the motion
    modules' blocks), in module order."""
    from diffusers.models.attention import BasicTransformerBlock

    return [
        name for name, m in model.named_modules()
        if isinstance(m, BasicTransformerBlock) and ".attentions." in f".{name}" and "motion_modules" not in name
    ]


def build_reference_unet(config: dict, state_dict: dict, dtype=torch.float32, device="cpu") -> nn.Module:
    """AniPortrait's reference UNet: `UNet2DConditionModel` without `conv_norm_out`/`conv_out`, from
    an AniPortrait `reference_unet.pth` dict (strict). The tensors of `state_dict` are adopted
    (not copied) when dtype and device already match."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(unet2d_config(config))
    model.conv_norm_out = None
    model.conv_act = None
    model.conv_out = nn.Identity()
    sd = convert.convert_reference_unet(state_dict, _shapes(model))
    return _materialize(model, sd, dtype, device)


# --------------------------------------------------------------------------------------------
# motion modules: per-frame GroupNorm


def _animatediff_transformer_cls():
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return AnimateDiffTransformer3D


def _per_frame_class():
    base = _animatediff_transformer_cls()

    class PerFrameMotionTransformer(base):
        """`AnimateDiffTransformer3D` whose GroupNorm normalises each frame on its own, as
        AniPortrait/AnimateDiff's `TemporalTransformer3DModel` does on `(b f) c h w`. Same keys."""

        def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, class_labels=None,
                    num_frames: int = 1, cross_attention_kwargs=None):
            bf, c, h, w = hidden_states.shape
            b = bf // num_frames
            residual = hidden_states
            x = self.norm(hidden_states)  # (b f) rows: statistics per frame
            x = x.reshape(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)
            x = self.proj_in(x)
            for block in self.transformer_blocks:
                x = block(hidden_states=x, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                          cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)
            x = self.proj_out(x)
            x = x.reshape(b, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
            return x + residual

    return PerFrameMotionTransformer


_PER_FRAME = None


def per_frame_motion_modules(model: nn.Module) -> int:
    """Switch every `AnimateDiffTransformer3D` inside `model` (or `model` itself) to per-frame
    GroupNorm, in place. Returns how many were switched."""
    global _PER_FRAME
    if _PER_FRAME is None:
        _PER_FRAME = _per_frame_class()
    base = _animatediff_transformer_cls()
    n = 0
    for m in model.modules():
        if isinstance(m, base) and not isinstance(m, _PER_FRAME):
            m.__class__ = _PER_FRAME
            n += 1
    return n


def build_motion_module(channels: int, config: dict, additional_kwargs: dict, state_dict: Mapping, *,
                        per_frame: bool = True, dtype=torch.float32, device="cpu") -> nn.Module:
    """One motion module alone, as the denoiser builds it for a block with `channels` channels.
    `state_dict`: the AniPortrait keys of one module *without* the `<block>.motion_modules.<j>.` prefix
    (e.g. `temporal_transformer.norm.weight`). Call it as `module(x_bf_c_h_w, num_frames=f)`.
    `per_frame=False` keeps diffusers' stock cross-frame GroupNorm (for comparison only)."""
    adapter = motion_adapter_config(config, additional_kwargs)
    heads = adapter["motion_num_attention_heads"]
    with torch.device("meta"):
        module = _animatediff_transformer_cls()(
            num_attention_heads=heads,
            in_channels=channels,
            num_layers=adapter["motion_transformer_layers_per_block"],
            norm_num_groups=config.get("norm_num_groups", 32),
            attention_bias=False,
            activation_fn="geglu",
            positional_embeddings="sinusoidal",
            num_positional_embeddings=adapter["motion_max_seq_length"],
            attention_head_dim=channels // heads,
            double_self_attention=True,
        )
    prefix = "down_blocks.0.motion_modules.0."
    sd = convert.convert_motion_module({prefix + k: v for k, v in state_dict.items()})
    sd = {k[len(prefix):]: v for k, v in sd.items()}
    expected = _shapes(module)
    for key, shape in expected.items():
        if key.endswith("pos_embed.pe") and key not in sd:
            sd[key] = convert.sinusoid(shape[1], shape[2])
    convert.check_state_dict(sd, expected, file=convert.MOTION_FILE,
                             original=lambda k: convert.diffusers_to_motion_key(prefix + k)[len(prefix):])
    if per_frame:
        per_frame_motion_modules(module)
    return _materialize(module, sd, dtype, device)


# --------------------------------------------------------------------------------------------
# reference bank


class ReferenceBank:
    """The reference UNet's `norm1` outputs, per transformer-block path: tensors (rows, h·w, C) with
    rows `[uncond…, cond…]` (a CFG write) or cond rows only (`cond_only`). Only the cond rows are ever
    read. `fp16_round` rounds the values to float16 and back (AniPortrait's default
    `ReferenceAttentionControl.update(dtype=float16)`), keeping the tensors' dtype."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], cond_only: bool = False, fp16_round: bool = False):
        if fp16_round:
            tensors = {k: v.to(torch.float16).to(v.dtype) for k, v in tensors.items()}
        self.tensors = dict(tensors)
        self.cond_only = bool(cond_only)
        self.fp16_round = bool(fp16_round)
        self._kv: dict = {}  # keys_values cache
        if not self.cond_only:
            odd = [k for k, v in self.tensors.items() if v.shape[0] % 2]
            if odd:
                raise ValueError(f"a [uncond, cond] bank needs an even number of rows: {odd[0]}")

    @property
    def paths(self) -> list[str]:
        return list(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, path: str) -> bool:
        return path in self.tensors

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.tensors[path]

    def cond(self, path: str) -> torch.Tensor:
        """The cond rows (n, h·w, C) of one block."""
        t = self.tensors[path]
        return t if self.cond_only else t[t.shape[0] // 2:]

    def cond_only_bank(self) -> ReferenceBank:
        """The same bank without its (never read) uncond rows."""
        return ReferenceBank({p: self.cond(p) for p in self.tensors}, cond_only=True, fp16_round=self.fp16_round)

    def to(self, device=None, dtype=None) -> ReferenceBank:
        """A copy on `device`/in `dtype` (rounding again to float16 is a no-op on rounded values)."""
        return ReferenceBank({k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()},
                             cond_only=self.cond_only, fp16_round=self.fp16_round)

    def keys_values(self, attns: Mapping[str, nn.Module], dtype, device) -> dict[str, tuple]:
        """The keys and values `attn.to_k(cond)`, `attn.to_v(cond)` of every block's cond rows, each
        (n, h·w, inner), computed once per (denoiser, dtype, device) and kept: the bank is the same
        for every window of every step, so projecting it again per call (16 frames x 2 layers x 25
        steps x every window) is wasted work. Exact: the same linear maps on the same values."""
        key = (id(attns), dtype, device)
        if key not in self._kv:
            self._kv.clear()  # one denoiser at a time
            with torch.no_grad():
                kv = {}
                for path, attn in attns.items():
                    ref = self.cond(path).to(device=device, dtype=dtype)
                    kv[path] = (attn.to_k(ref), attn.to_v(ref))
            self._kv[key] = kv
        return self._kv[key]


class _WriteDone(Exception):
    pass


@torch.no_grad()
def write_reference(ref_unet: nn.Module, ref_latents: torch.Tensor, clip_embeds: torch.Tensor, do_cfg: bool,
                    fp16_round: bool = False, cond_only: bool = False) -> ReferenceBank:
    """Run the reference UNet once at t = 0 and record the `norm1` output of each spatial transformer
    block (the input of its `attn1`).

    Compat (AniPortrait): with `do_cfg` the batch is `ref_latents` twice with encoder states
    `[zeros, clip]`, giving a [uncond, cond] bank; without CFG, batch 1 with the CLIP states.
    `cond_only=True` under CFG writes the cond row alone (batch 1): the uncond row is never read, so
    the denoiser output is the same at half the cost.
    `ref_latents` (n, 4, h, w); `clip_embeds` (n, 1, D) or (n, D). The forward stops after the last
    block's record (the rest of the reference UNet's output is unused)."""
    param = next(ref_unet.parameters())
    dtype, device = param.dtype, param.device
    lat = ref_latents.to(device=device, dtype=dtype)
    clip = clip_embeds.to(device=device, dtype=dtype)
    if clip.dim() == 2:
        clip = clip[:, None]
    if do_cfg and not cond_only:
        lat = torch.cat([lat, lat])
        ehs = torch.cat([torch.zeros_like(clip), clip])
        bank_cond_only = False
    else:
        ehs = clip
        bank_cond_only = True
    paths = transformer_block_paths(ref_unet)
    modules = dict(ref_unet.named_modules())
    records: dict[str, torch.Tensor] = {}

    def hook(path):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            records[path] = hidden
            if len(records) == len(paths):
                raise _WriteDone

        return record

    handles = [modules[p + ".attn1"].register_forward_pre_hook(hook(p), with_kwargs=True) for p in paths]
    try:
        t = torch.zeros((), dtype=torch.long, device=device)
        ref_unet(lat, t, encoder_hidden_states=ehs, return_dict=False)
    except _WriteDone:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [p for p in paths if p not in records]
    if missing:
        raise RuntimeError(f"reference write recorded no tensor for {missing[0]}")
    return ReferenceBank({p: records[p] for p in paths}, cond_only=bank_cond_only, fp16_round=fp16_round)


# --------------------------------------------------------------------------------------------
# reference attention (denoiser side)


class _ReadState:
    """What the `attn1` processors read during one denoiser call: the bank's cached keys and values
    per block path (None: no reference), how many leading rows are uncond, the frame count."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.kv = None
        self.uncond_rows = 0
        self.frames = 1


def _heads_split(attn, x: torch.Tensor) -> torch.Tensor:
    b, n, inner = x.shape
    return x.view(b, n, attn.heads, inner // attn.heads).transpose(1, 2)


def _sdpa(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    b = query.shape[0]
    out = F.scaled_dot_product_attention(_heads_split(attn, query), _heads_split(attn, key),
                                         _heads_split(attn, value), dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


def _self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    return _sdpa(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x))


class ReferenceReadProcessor:
    """`attn1` processor of one spatial transformer block of the denoiser: plain self-attention,
    except that rows reading the reference take keys/values from `[own tokens, bank tokens]`
    (AniPortrait `ReferenceAttentionControl` read mode). The shared `_ReadState` says per call which
    rows are uncond (first `uncond_rows`, plain self-attention) and the frame count."""

    def __init__(self, path: str, state: _ReadState):
        self.path = path
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or attn.group_norm is not None \
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.residual_connection \
                or attn.rescale_output_factor != 1.0:
            raise NotImplementedError("reference attention supports plain SD1.5 self-attention only")
        st = self.state
        if st.kv is None:
            return _self_attention(attn, hidden_states)
        nu = st.uncond_rows
        x = hidden_states[nu:]
        rows, frames = x.shape[0], st.frames
        k_ref, v_ref = st.kv[self.path]
        n = k_ref.shape[0]
        if n == 1:
            k_ref = k_ref.expand(rows, -1, -1)
            v_ref = v_ref.expand(rows, -1, -1)
        elif n * frames == rows:
            k_ref = k_ref[:, None].expand(n, frames, *k_ref.shape[1:]).reshape(rows, *k_ref.shape[1:])
            v_ref = v_ref[:, None].expand(n, frames, *v_ref.shape[1:]).reshape(rows, *v_ref.shape[1:])
        else:
            raise ValueError(f"reference bank {self.path}: {n} cond rows for {rows // frames} cond batch elements")
        key = torch.cat([attn.to_k(x), k_ref], dim=1)
        value = torch.cat([attn.to_v(x), v_ref], dim=1)
        out = _sdpa(attn, attn.to_q(x), key, value)
        if nu == 0:
            return out
        return torch.cat([_self_attention(attn, hidden_states[:nu]), out])


class OneTokenCrossAttention:
    """`attn2` processor of the spatial transformer blocks. AniPortrait's encoder states are one token
    per frame (the CLIP image embedding, or zeros for the uncond rows): a softmax over a single key
    is exactly 1, so every query's output is that token's value, `to_out(to_v(token))`, whatever the
    query. Computing it once per row instead of per pixel drops the query projection, the attention
    and the per-pixel output projection (exact; the value is the same one the attention would copy).
    Any other call (several tokens, a mask) takes diffusers' SDPA processor."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        plain = attn.norm_cross is None and attn.group_norm is None and attn.spatial_norm is None \
            and not attn.residual_connection and attn.rescale_output_factor == 1.0
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] != 1 or attention_mask is not None \
                or hidden_states.dim() != 3 or not plain:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        value = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))  # (b, 1, C)
        return value.to(hidden_states.dtype).expand(-1, hidden_states.shape[1], -1)


# --------------------------------------------------------------------------------------------
# denoiser


class Denoiser(nn.Module):
    """AniPortrait's denoising UNet (UNet3DConditionModel + ReferenceAttentionControl reader).

    `denoiser(latents, timestep, encoder_hidden_states, pose_features, bank, do_cfg)`:
    - latents (b, 4, f, h, w); with `do_cfg` the batch is `[uncond…, cond…]` (b even);
    - timestep: int/float, a 0-d tensor or a (b,) tensor;
    - encoder_hidden_states (b, S, D) (AniPortrait: (b, 1, D), zeros for uncond), repeated per frame;
    - pose_features: the PoseGuider's 5 tensors (b, c_k, f, h_k, w_k); batch 1 is broadcast, and with
      `do_cfg` a batch of b/2 is used by both halves (element i by rows i and b/2 + i);
    - bank: a `ReferenceBank` or None (no reference); only the cond rows read it;
    returns the v-prediction (b, 4, f, h, w) in the model dtype."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self._read = _ReadState()
        self.block_paths = transformer_block_paths(unet)
        modules = dict(unet.named_modules())
        self._attn1 = {path: modules[path + ".attn1"] for path in self.block_paths}  # plain dict: no re-registration
        for path, attn in self._attn1.items():
            attn.set_processor(ReferenceReadProcessor(path, self._read))
        for path in self.block_paths:
            attn2 = modules[path + ".attn2"] if path + ".attn2" in modules else None
            if attn2 is not None and attn2.is_cross_attention:
                attn2.set_processor(OneTokenCrossAttention())

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @torch.no_grad()
    def forward(self, latents: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                pose_features: Sequence[torch.Tensor], bank: ReferenceBank | None = None,
                do_cfg: bool = False) -> torch.Tensor:
        unet = self.unet
        dtype, device = self.dtype, self.device
        latents = latents.to(device=device, dtype=dtype)
        b, c, f, h, w = latents.shape
        if do_cfg and b % 2:
            raise ValueError(f"CFG needs an even batch [uncond, cond], got {b}")
        if len(pose_features) != 1 + len(unet.down_blocks):
            raise ValueError(f"expected {1 + len(unet.down_blocks)} pose feature tensors, got {len(pose_features)}")
        if bank is not None:
            absent = [p for p in self.block_paths if p not in bank]
            if absent:
                raise ValueError(f"reference bank has no tensor for {absent[0]}")

        rows = 2 if do_cfg else 1

        def frames(p: torch.Tensor) -> torch.Tensor:  # (b|b/rows|1, c, f, h, w) -> (b f, c, h, w), b-major
            p = p.to(device=device, dtype=dtype)
            bp, cp, fp, hp, wp = p.shape
            if bp not in (1, b, b // rows) or fp != f:
                raise ValueError(f"pose feature of shape {tuple(p.shape)} for latents of shape {tuple(latents.shape)}")
            if bp not in (1, b):  # one copy per batch element, shared by the uncond and cond rows
                p = p[None].expand(rows, *p.shape).reshape(b, cp, fp, hp, wp)
            return p.expand(b, cp, f, hp, wp).transpose(1, 2).reshape(b * f, cp, hp, wp)

        # time: sinusoid in float32 (diffusers' Timesteps), cast, broadcast over frames
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=device)
        elif t.dim() == 0:
            t = t[None].to(device)
        t = t.to(device).expand(b)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=dtype))
        emb = emb.repeat_interleave(f, dim=0, output_size=b * f)
        ehs = encoder_hidden_states.to(device=device, dtype=dtype)
        ehs = ehs.repeat_interleave(f, dim=0, output_size=b * f)

        up_factor = 2 ** unet.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in (h, w))
        upsample_size = None

        self._read.kv = None if bank is None else bank.keys_values(self._attn1, dtype, device)
        self._read.uncond_rows = (b // 2) * f if do_cfg else 0
        self._read.frames = f
        try:
            sample = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
            sample = unet.conv_in(sample) + frames(pose_features[0])
            res_samples_all = (sample,)
            for i, block in enumerate(unet.down_blocks):
                if getattr(block, "has_cross_attention", False):
                    sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=ehs, num_frames=f)
                else:
                    sample, res = block(hidden_states=sample, temb=emb, num_frames=f)
                res_samples_all += res
                sample = sample + frames(pose_features[i + 1])  # after the skips were taken
            sample = unet.mid_block(sample, emb, encoder_hidden_states=ehs, num_frames=f)
            for i, block in enumerate(unet.up_blocks):
                n = len(block.resnets)
                res, res_samples_all = res_samples_all[-n:], res_samples_all[:-n]
                if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                    upsample_size = res_samples_all[-1].shape[2:]
                if getattr(block, "has_cross_attention", False):
                    sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                                   encoder_hidden_states=ehs, upsample_size=upsample_size, num_frames=f)
                else:
                    sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                                   upsample_size=upsample_size, num_frames=f)
            if unet.conv_norm_out is not None:
                sample = unet.conv_act(unet.conv_norm_out(sample))
            sample = unet.conv_out(sample)
        finally:
            self._read.clear()
        return sample.reshape(b, f, *sample.shape[1:]).permute(0, 2, 1, 3, 4)


def build_denoiser(config: dict, additional_kwargs: dict, spatial_sd: dict, motion_sd: dict,
                   dtype=torch.float32, device="cpu") -> Denoiser:
    """The denoising UNet from the 2D UNet config, AniPortrait's `unet_additional_kwargs` and the
    `denoising_unet.pth` / `motion_module.pth` dicts (converted strictly, see `convert`)."""
    from diffusers import UNetMotionModel

    kwargs = motion_unet_kwargs(config, additional_kwargs)
    with torch.device("meta"):
        unet = UNetMotionModel(**kwargs)
    sd = convert.convert_denoising_unet(spatial_sd, motion_sd, _shapes(unet))
    per_frame_motion_modules(unet)
    _materialize(unet, sd, dtype, device)
    return Denoiser(unet).eval()
