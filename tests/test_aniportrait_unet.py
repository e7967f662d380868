"""AniPortrait UNets on diffusers, against the golden fixtures (design note §6, rungs 1, 5, 6, 7).

Weights are rebuilt from the fixture recipe in AniPortrait's checkpoint format and go through the
converter, so every numeric rung also tests `convert.py`. Tolerances: fixture README §6
(|diff| <= 1e-9 * max|expected| in float64).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import aniportrait_fixtures as fx

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from a2pcli.aniportrait import convert  # noqa: E402
from a2pcli.aniportrait.unet import (  # noqa: E402
    ReferenceBank,
    build_denoiser,
    build_motion_module,
    build_reference_unet,
    transformer_block_paths,
    write_reference,
)
from a2pcli.errors import ModelError  # noqa: E402

F64 = torch.float64
UNET_MODELS = ("reference_unet", "denoising_unet_and_motion_module")


def T(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def _cfg():
    c = fx.configs()
    return c["unet_2d_and_3d_base"], c["unet3d_additional_kwargs"]


def _w(ckpt: str) -> dict:
    return fx.weights(*UNET_MODELS)[ckpt]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the tiny models gain nothing from intra-op threads, and on a loaded machine the thread
    # hand-offs cost several times the compute
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref_unet():
    base, _ = _cfg()
    return build_reference_unet(base, _w("reference_unet.pth"), dtype=F64)


@pytest.fixture(scope="module")
def denoiser():
    base, add = _cfg()
    return build_denoiser(base, add, _w("denoising_unet.pth"), _w("motion_module.pth"), dtype=F64)


def _bank(prefix: str, **kw) -> ReferenceBank:
    rw = fx.arrays("reference_write.npz")
    return ReferenceBank({k[len(prefix):]: T(v) for k, v in rw.items() if k.startswith(prefix)}, **kw)


# ---------------------------------------------------------------------------------------------
# rung 1: keys (full size, on the meta device)


def _fullsize():
    keys = fx.folder() / "keys"
    files = json.loads((keys / "fullsize_keys.json").read_text())["files"]
    base = json.loads((keys / "sd15_unet_config.json").read_text())
    add = json.loads((keys / "inference_v2_unet_additional_kwargs.json").read_text())

    def meta(name):
        return {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, s, d in files[name]}

    return base, add, meta


def test_rung1_fullsize_reference_unet_keys():
    from diffusers import UNet2DConditionModel

    base, _, meta = _fullsize()
    ckpt = meta("reference_unet.pth")
    model = build_reference_unet(base, ckpt, device="meta")
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ckpt.items()}
    with torch.device("meta"):
        sd15 = UNet2DConditionModel.from_config(base).state_dict()
    assert set(sd15) - set(ckpt) == set(convert.REFERENCE_UNET_ABSENT)
    assert set(ckpt) <= set(sd15)
    assert len(transformer_block_paths(model)) == 16


def test_rung1_fullsize_denoiser_keys():
    base, add, meta = _fullsize()
    spatial, motion = meta("denoising_unet.pth"), meta("motion_module.pth")
    den = build_denoiser(base, add, spatial, motion, device="meta")
    model_keys = {k: tuple(v.shape) for k, v in den.unet.state_dict().items()}
    assert len(model_keys) == 686 + 567

    # spatial: identity
    assert all(model_keys[k] == tuple(v.shape) for k, v in spatial.items())
    # motion: every key renamed onto a distinct model key, except the documented pe buffers
    mapped = {k: convert.motion_key_to_diffusers(k) for k in motion}
    dropped = sorted(k for k, v in mapped.items() if v is None)
    assert len(dropped) == 42 and all(k.endswith("pos_encoder.pe") for k in dropped)
    targets = [v for v in mapped.values() if v is not None]
    assert len(targets) == len(set(targets)) == 546
    assert all(model_keys[v] == tuple(motion[k].shape) for k, v in mapped.items() if v is not None)
    for k, v in mapped.items():
        if v is not None:
            assert convert.diffusers_to_motion_key(v) == k
    # the pe buffers become the one shared pos_embed.pe per module (21), same shape
    pe_keys = {k for k in model_keys if k.endswith("pos_embed.pe")}
    assert len(pe_keys) == 21
    assert set(model_keys) == set(spatial) | set(targets) | pe_keys
    for k in dropped:
        module, rest = k.split(".temporal_transformer.")
        target = f"{module}.{rest.split('.attention_blocks.')[0]}.pos_embed.pe"
        assert model_keys[target] == tuple(motion[k].shape)


def _build_tiny_denoiser(spatial, motion):
    base, add = _cfg()
    return build_denoiser(base, add, spatial, motion, dtype=F64)


def test_rung1_renamed_spatial_key_is_named():
    spatial = dict(_w("denoising_unet.pth"))
    spatial["conv_in.weights"] = spatial.pop("conv_in.weight")
    with pytest.raises(ModelError) as e:
        _build_tiny_denoiser(spatial, _w("motion_module.pth"))
    msg = e.value.one_line()
    assert e.value.subject == "denoising_unet.pth"
    assert "'conv_in.weight'" in msg and "'conv_in.weights'" in msg


def test_rung1_missing_motion_tensor_is_named_in_checkpoint_spelling():
    motion = dict(_w("motion_module.pth"))
    key = "up_blocks.2.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v.weight"
    del motion[key]
    with pytest.raises(ModelError) as e:
        _build_tiny_denoiser(_w("denoising_unet.pth"), motion)
    assert e.value.subject == "motion_module.pth"
    assert f"missing key '{key}'" in e.value.one_line()


def test_rung1_renamed_motion_key_is_named():
    motion = dict(_w("motion_module.pth"))
    key = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.bias"
    motion[key.replace("ff_norm", "ff_norms")] = motion.pop(key)
    with pytest.raises(ModelError) as e:
        _build_tiny_denoiser(_w("denoising_unet.pth"), motion)
    assert e.value.subject == "motion_module.pth"
    assert repr(key.replace("ff_norm", "ff_norms")) in e.value.one_line()


def test_rung1_misplaced_and_misshapen_tensors():
    spatial, motion = dict(_w("denoising_unet.pth")), dict(_w("motion_module.pth"))
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.bias"
    with pytest.raises(ModelError, match="belong in motion_module.pth"):
        _build_tiny_denoiser({**spatial, key: motion[key]}, motion)
    with pytest.raises(ModelError, match="has shape"):
        _build_tiny_denoiser({**spatial, "conv_in.bias": torch.zeros(7, dtype=F64)}, motion)
    base, _ = _cfg()
    ref = dict(_w("reference_unet.pth"))
    with pytest.raises(ModelError, match="conv_out.weight") as e:
        build_reference_unet(base, {**ref, "conv_out.weight": spatial["conv_out.weight"]})
    assert e.value.subject == "reference_unet.pth"
    del ref["mid_block.attentions.0.proj_out.bias"]
    with pytest.raises(ModelError, match="missing key 'mid_block.attentions.0.proj_out.bias'"):
        build_reference_unet(base, ref)


def test_rung1_pe_buffers_checked_and_optional():
    motion = dict(_w("motion_module.pth"))
    pe_keys = [k for k in motion if convert.is_pe_key(k)]
    assert len(pe_keys) == 42
    # the recipe's pe is the float64 sinusoid: it is what the model holds after loading
    den = _build_tiny_denoiser(_w("denoising_unet.pth"), motion)
    pe = den.unet.down_blocks[1].motion_modules[0].transformer_blocks[0].pos_embed.pe
    key = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    assert key in pe_keys and torch.equal(pe, motion[key].to(F64))
    # the recipe's table is numpy's float64 exp/sin/cos, convert.sinusoid torch's: libraries whose
    # vectorised versions are within 4 ulp (AVX-512: numpy's SVML, torch's SLEEF). Each side's error is
    # at most the angle's (position <= 31 times exp's 4 ulp plus the product's half ulp) plus sin's 4 ulp.
    length = pe.shape[1]
    atol = 2 * ((length - 1) * 4.5 + 4) * 2.0**-52
    assert torch.allclose(pe.cpu(), convert.sinusoid(length, pe.shape[-1]), rtol=0, atol=atol)
    # a corrupted pe is refused, named
    bad = dict(motion)
    bad[pe_keys[5]] = bad[pe_keys[5]] + 0.01
    with pytest.raises(ModelError) as e:
        _build_tiny_denoiser(_w("denoising_unet.pth"), bad)
    assert repr(pe_keys[5]) in e.value.one_line() and "sinusoidal" in e.value.one_line()
    # without pe buffers the float64 sinusoid is recomputed
    den = _build_tiny_denoiser(_w("denoising_unet.pth"), {k: v for k, v in motion.items() if k not in pe_keys})
    assert torch.equal(den.unet.mid_block.motion_modules[0].transformer_blocks[0].pos_embed.pe,
                       convert.sinusoid(32, 128))
    # the denoiser output does not depend on which of the two float64 sinusoids is loaded
    d = fx.arrays("denoiser.npz")
    out = den(*_inputs(5, slice(1, 2)), _bank("bank_nocfg__", cond_only=True), do_cfg=False)
    fx.close(out.numpy(), d["out_nocfg_f5"], what="recomputed pe")


# ---------------------------------------------------------------------------------------------
# rung 5: one motion module alone


def _motion_module(per_frame: bool):
    base, add = _cfg()
    prefix = "down_blocks.1.motion_modules.0."
    sd = {k[len(prefix):]: v for k, v in _w("motion_module.pth").items() if k.startswith(prefix)}
    return build_motion_module(64, base, add, sd, per_frame=per_frame, dtype=F64)


def _run_motion(module, x: np.ndarray) -> np.ndarray:
    b, c, f, h, w = x.shape
    y = module(T(x).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), num_frames=f)
    return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).numpy()


@pytest.mark.parametrize("frames", [16, 5])
def test_rung5_motion_module(frames):
    mm = fx.arrays("motion_module.npz")
    with torch.no_grad():
        y = _run_motion(_motion_module(per_frame=True), mm[f"x_f{frames}"])
    fx.close(y, mm[f"y_f{frames}"], what=f"motion module, {frames} frames")


def test_rung5_stock_cross_frame_groupnorm_differs():
    mm = fx.arrays("motion_module.npz")
    with torch.no_grad():
        y = _run_motion(_motion_module(per_frame=False), mm["x_f16"])
    err = np.abs(y - mm["y_f16"]).max()
    assert err > 1e-3 * np.abs(mm["y_f16"]).max(), err


# ---------------------------------------------------------------------------------------------
# rung 6: reference write


def test_rung6_reference_write_cfg(ref_unet):
    rw = fx.arrays("reference_write.npz")
    info = fx.summary()["fixtures"]["reference_write"]["info"]
    bank = write_reference(ref_unet, T(rw["ref_latents"]), T(rw["clip_embeds"]), do_cfg=True)
    assert not bank.cond_only
    assert sorted(bank.paths) == sorted(info["block_paths_dfs_order"])
    for p in bank.paths:
        fx.close(bank[p].numpy(), rw[f"bank_cfg__{p}"], what=p)
    # the reference UNet's own output (no conv_norm_out/conv_out: the last up block's output)
    with torch.no_grad():
        lat = T(rw["ref_latents"]).repeat(2, 1, 1, 1)
        ehs = torch.cat([torch.zeros_like(T(rw["clip_embeds"])), T(rw["clip_embeds"])])
        out = ref_unet(lat, torch.tensor(0), encoder_hidden_states=ehs, return_dict=False)[0]
    fx.close(out.numpy(), rw["ref_unet_output_cfg"], what="reference UNet output")


def test_rung6_reference_write_nocfg_and_cond_only(ref_unet):
    rw = fx.arrays("reference_write.npz")
    nocfg = write_reference(ref_unet, T(rw["ref_latents"]), T(rw["clip_embeds"]), do_cfg=False)
    cond = write_reference(ref_unet, T(rw["ref_latents"]), T(rw["clip_embeds"]), do_cfg=True, cond_only=True)
    assert nocfg.cond_only and cond.cond_only
    for p in nocfg.paths:
        fx.close(nocfg[p].numpy(), rw[f"bank_nocfg__{p}"], what=f"no-CFG {p}")
        fx.close(cond.cond(p).numpy(), rw[f"bank_cfg__{p}"][1:], what=f"cond-only {p}")


def test_rung6_fp16_rounding_flag(ref_unet):
    rw = fx.arrays("reference_write.npz")
    bank = write_reference(ref_unet, T(rw["ref_latents"]), T(rw["clip_embeds"]), do_cfg=True, fp16_round=True)
    p = "mid_block.attentions.0.transformer_blocks.0"
    assert bank[p].dtype == F64 and bank.fp16_round
    assert torch.equal(bank[p], bank[p].half().double())
    fx.close(bank[p].numpy(), rw[f"bank_cfg__{p}"], rel=2e-3, what="rounded bank")


# ---------------------------------------------------------------------------------------------
# rung 7: one denoiser call


def _inputs(frames: int = 16, rows=slice(None)):
    d = fx.arrays("denoiser.npz")
    lat = T(d["latents"][rows, :, :frames])
    pose = [T(d[f"pose_fea{i}"][rows, :, :frames]) for i in range(5)]
    return lat, T(d["timestep"]), T(d["encoder_hidden_states"][rows]), pose


@pytest.mark.parametrize("frames", [16, 5])
def test_rung7_denoiser_cfg(denoiser, frames):
    d = fx.arrays("denoiser.npz")
    out = denoiser(*_inputs(frames), _bank("bank_cfg__"), do_cfg=True)
    assert out.shape == d[f"out_cfg_f{frames}"].shape and out.dtype == F64
    fx.close(out.numpy(), d[f"out_cfg_f{frames}"], what=f"CFG, {frames} frames")


@pytest.mark.parametrize("frames", [16, 5])
def test_rung7_denoiser_nocfg(denoiser, frames):
    d = fx.arrays("denoiser.npz")
    out = denoiser(*_inputs(frames, slice(1, 2)), _bank("bank_nocfg__", cond_only=True), do_cfg=False)
    fx.close(out.numpy(), d[f"out_nocfg_f{frames}"], what=f"no CFG, {frames} frames")


def test_rung7_denoiser_fp16_rounded_bank(denoiser):
    d = fx.arrays("denoiser.npz")
    out = denoiser(*_inputs(), _bank("bank_cfg__", fp16_round=True), do_cfg=True).numpy()
    fx.close(out, d["out_cfg_f16_bankfp16"], what="fp16-rounded bank")
    # the rounding matters at this tolerance: the float64-bank output does not match the faithful one
    assert np.abs(out - d["out_cfg_f16"]).max() > 100 * 1e-9 * np.abs(d["out_cfg_f16_bankfp16"]).max()


def test_rung7_cond_only_bank_and_own_write_are_exact(denoiser, ref_unet):
    d, rw = fx.arrays("denoiser.npz"), fx.arrays("reference_write.npz")
    full = denoiser(*_inputs(), _bank("bank_cfg__"), do_cfg=True)
    cond = denoiser(*_inputs(), _bank("bank_cfg__").cond_only_bank(), do_cfg=True)
    assert torch.equal(full, cond)
    # the saving path end to end: our batch-1 cond-only write feeds the CFG call
    own = write_reference(ref_unet, T(rw["ref_latents"]), T(rw["clip_embeds"]), do_cfg=True, cond_only=True)
    fx.close(denoiser(*_inputs(), own, do_cfg=True).numpy(), d["out_cfg_f16"], what="own cond-only bank")


def test_rung7_uncond_rows_ignore_the_reference(denoiser):
    d = fx.arrays("denoiser.npz")
    plain = denoiser(*_inputs(), None, do_cfg=True).numpy()
    fx.close(plain[:1], d["out_cfg_f16"][:1], what="uncond row without reference")
    assert np.abs(plain[1:] - d["out_cfg_f16"][1:]).max() > 1e-6 * np.abs(d["out_cfg_f16"]).max()


def test_one_token_cross_attention_is_the_value_of_that_token():
    """A softmax over one key is 1: the cross-attention of AniPortrait's one CLIP token is the
    token's projected value at every pixel, the same numbers as the attention computed in full."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from a2pcli.aniportrait.unet import OneTokenCrossAttention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8, out_bias=True).to(F64).eval()
    x, token = torch.randn(3, 40, 16, dtype=F64), torch.randn(3, 1, 8, dtype=F64)
    full = AttnProcessor2_0()(attn, x, token)
    short = OneTokenCrossAttention()(attn, x, token)
    assert short.shape == full.shape
    torch.testing.assert_close(short, full, rtol=0, atol=1e-13)
    two = torch.randn(3, 2, 8, dtype=F64)  # several tokens: the full attention
    assert torch.equal(OneTokenCrossAttention()(attn, x, two), AttnProcessor2_0()(attn, x, two))


def test_denoiser_shares_one_pose_feature_copy_per_window_between_the_guidance_halves(denoiser):
    """Two windows in one call: pose features of batch 2 (one per window) are read by the uncond and
    the cond row of each, the same output as the features spelled out per row."""
    lat, t, ehs, pose = _inputs(5)
    lat2 = torch.cat([lat[:1], lat[:1].flip(2), lat[1:], lat[1:].flip(2)])  # [u1, u2, c1, c2]
    ehs2 = ehs.repeat_interleave(2, dim=0)
    per_window = [torch.cat([p[:1], p[:1].flip(2)]) for p in pose]
    per_row = [torch.cat([p, p]) for p in per_window]
    bank = _bank("bank_cfg__")
    a = denoiser(lat2, t, ehs2, per_window, bank, do_cfg=True)
    b = denoiser(lat2, t, ehs2, per_row, bank, do_cfg=True)
    assert torch.equal(a, b)
