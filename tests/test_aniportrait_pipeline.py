"""AniPortrait's Lmk2Video pipeline against the oracle's golden fixtures (shared/fixtures/aniportrait,
README §4 rungs 2, 3, 4, 8, 9): context windows, DDIM scheduler, PoseGuider, the whole sampler
(four variants; compat mode and the exact savings) and the VAE decode.

The fixture folder and the weight seed come only through tests/aniportrait_fixtures.py; models are
float64 on CPU, tolerances per the fixture README §6 (1e-9 x max|ref|; 1e-8 for the PoseGuider's batch
statistics).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import aniportrait_fixtures as fx

F64 = torch.float64
VARIANTS = ("bank64", "faithful_fp16bank", "nocfg_bank64", "n5_bank64")
SAMPLER_TOL = 1e-9
# The exact savings change the order of float operations only: PoseGuider batch statistics of one
# copy instead of the duplicated CFG batch (1.3e-10 on the features, README rung 4) and a batch-1
# reference write (2.2e-14 on the bank). Measured against the oracle (= compat): 2e-11 x max on the
# final latents, 8e-11 on the denoiser outputs (CFG variants), 2e-15 without CFG.
SAVINGS_TOL = 1e-9


def t64(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(F64)


# ---------------------------------------------------------------------------------------------
# rung 2: windows


def test_closed_loop_windows_equal_the_pipeline_call():
    import json

    from a2pcli.aniportrait.windows import context_windows, uniform

    data = json.loads((fx.folder() / "windows.json").read_text())
    assert data["windows"], "no windows in the fixture"
    for n, expected in data["windows"].items():
        assert uniform(0, 25, int(n), 16, 1, 4) == expected, f"N={n}"
        assert context_windows(int(n)) == expected, f"N={n}"
    extra = data["extra"]
    assert uniform(0, 25, 30, 16, 1, 0) == extra["overlap0_N30"]
    assert uniform(0, 25, 30, 16, 1, 4, closed_loop=False) == extra["open_loop_N30"]
    assert uniform(0, 25, 300, 16, 1, 4, closed_loop=False) == extra["open_loop_N300"]


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 20, 28, 29, 30, 90, 100, 300])
def test_no_wrap_windows_cover_the_clip_in_order(n):
    from a2pcli.aniportrait.windows import context_windows, coverage

    wins = context_windows(n, 16, 4, 1, "no_wrap")
    assert all(w == list(range(w[0], w[0] + len(w))) for w in wins), "windows must be consecutive, no wrap"
    assert all(len(w) == min(16, n) for w in wins)
    assert wins[0][0] == 0 and wins[-1][-1] == n - 1
    assert min(coverage(wins, n)) >= 1
    starts = [w[0] for w in wins]
    assert starts == sorted(set(starts))
    assert all(b - a <= 12 for a, b in zip(starts, starts[1:])), "at least 4 frames of overlap"
    if n == 20:
        assert wins == [list(range(16)), list(range(4, 20))]


# ---------------------------------------------------------------------------------------------
# rung 3: scheduler


def test_ddim_scheduler_tables_timesteps_and_steps():
    """The float32 tables are torch's float32 arithmetic, whose vectorised kernels round differently per
    instruction set (AVX2, AVX-512, none): they are compared within the float32 rounding bound of their
    formula (fx.ddim_tables_with_bounds), not bit for bit. Exact where exactly specified: the zero
    terminal value, the integer timesteps. The float64 steps then run on the oracle's own tables, to 1e-9."""
    from a2pcli.aniportrait.scheduler import build_scheduler

    z = fx.arrays("scheduler.npz")
    summary = fx.summary()["fixtures"]["scheduler"]["info"]
    s = build_scheduler("ddim")
    assert dict(s.config)["prediction_type"] == "v_prediction" and s.config.rescale_betas_zero_snr
    assert s.betas.dtype == torch.float32 and s.alphas_cumprod.dtype == torch.float32
    bounds = fx.ddim_tables_with_bounds(dict(s.config))
    for name in ("betas", "alphas_cumprod"):
        value, bound = bounds[name]
        ours, oracle = getattr(s, name).numpy().astype(np.float64), z[name].astype(np.float64)
        assert np.all(np.abs(oracle - value) <= bound), f"{name}: the bound does not hold for the oracle's table"
        worst = float(np.max(np.abs(ours - value) / bound))
        assert worst <= 1.0, f"{name}: {worst:.3g} x the float32 rounding bound from the float64 value"
    assert s.alphas_cumprod[-1].item() == 0.0
    assert float(s.final_alpha_cumprod) == float(z["final_alpha_cumprod"])
    assert float(s.init_noise_sigma) == float(z["init_noise_sigma"])
    for n in (25, 20, 10, 3, 1):
        s.set_timesteps(n)
        assert np.array_equal(s.timesteps.numpy(), z[f"timesteps_{n}"]), f"timesteps for {n} steps"
    assert len(summary["steps"]) >= 10
    for info in summary["steps"]:
        key, n, t = info["key"], info["num_inference_steps"], info["t"]
        s = fx.fixture_ddim("ddim")
        s.set_timesteps(n)
        sample, v = t64(z[f"step_{key}_sample"]), t64(z[f"step_{key}_model_output"])
        assert torch.equal(s.scale_model_input(sample, t), sample)
        out = s.step(v, t, sample, eta=0.0)
        fx.close(out.prev_sample.numpy(), z[f"step_{key}_prev_sample"], what=f"{key} prev_sample")
        fx.close(out.pred_original_sample.numpy(), z[f"step_{key}_pred_original_sample"],
                 what=f"{key} pred_original_sample")


@pytest.mark.parametrize("kind", ["dpmpp", "unipc"])
def test_fast_schedulers_share_the_training_settings(kind):
    from a2pcli.aniportrait.scheduler import build_scheduler

    s = build_scheduler(kind)
    assert s.config.prediction_type == "v_prediction" and s.config.rescale_betas_zero_snr
    assert s.config.timestep_spacing == "trailing"
    s.set_timesteps(10)
    assert int(s.timesteps[0]) == 999 and len(s.timesteps) == 10
    x = torch.randn(1, 4, 2, 2, 3, generator=torch.manual_seed(0), dtype=F64)
    for t in s.timesteps:
        x = s.step(0.1 * x, t, x).prev_sample
    assert torch.isfinite(x).all()


# ---------------------------------------------------------------------------------------------
# rung 4: PoseGuider


@pytest.fixture(scope="module")
def pose_guider():
    from a2pcli.aniportrait.pose_guider import build_pose_guider

    sd = fx.weights("pose_guider")["pose_guider.pth"]
    return build_pose_guider(fx.configs()["pose_guider"], sd, dtype=F64)


def _pose_fixture_input(scale: str, rows: int = 2):
    from a2pcli.aniportrait.pose_guider import pose_tensor

    z = fx.arrays("pose_guider.npz")
    x = pose_tensor(z["pose_uint8_bgr"], scale, dtype=F64).repeat(rows, 1, 1, 1, 1)
    ref = pose_tensor([z["ref_pose_uint8_bgr"]], scale, dtype=F64)[:, :, 0]
    return x, ref


@pytest.mark.parametrize("scale,prefix", [("uint8_quirk", "train_x509"), ("unit", "train_x11")])
def test_pose_guider_batch_statistics(pose_guider, scale, prefix):
    z = fx.arrays("pose_guider.npz")
    x, ref = _pose_fixture_input(scale)
    if scale == "uint8_quirk":
        info = fx.summary()["fixtures"]["pose_guider"]["info"]
        assert x.min().item() == -1.0 and x.max().item() == info["x509_range"][1]
        assert torch.equal(x, 2.0 * t64(z["pose_uint8_bgr"]).permute(3, 0, 1, 2)[None].repeat(2, 1, 1, 1, 1) - 1)
    else:
        assert -1.0 <= x.min().item() and x.max().item() <= 1.0
    pose_guider.set_bn_mode("batch")
    with torch.no_grad():
        out = pose_guider(x, ref)
    assert len(out) == 5
    for k in range(5):
        fx.close(out[k].numpy(), z[f"{prefix}_fea{k}"], rel=1e-8, what=f"{prefix} fea{k}")


def test_pose_guider_eval_mode_is_a_different_function(pose_guider):
    """Negative test: the running statistics (eval mode) do not reproduce AniPortrait; they match
    the oracle's own eval-mode run."""
    z = fx.arrays("pose_guider.npz")
    x, ref = _pose_fixture_input("uint8_quirk")
    try:
        pose_guider.set_bn_mode("running")
        with torch.no_grad():
            out = pose_guider(x, ref)
    finally:
        pose_guider.set_bn_mode("batch")
    for k in range(5):
        fx.close(out[k].numpy(), z[f"eval_x509_fea{k}"], rel=1e-8, what=f"eval fea{k}")
    assert max(float(np.abs(out[k].numpy() - z[f"train_x509_fea{k}"]).max()) for k in range(5)) > 1.0


def test_pose_guider_ref_x_has_no_effect_and_one_copy_equals_the_cfg_batch(pose_guider):
    z = fx.arrays("pose_guider.npz")
    x, ref = _pose_fixture_input("uint8_quirk", rows=1)
    pose_guider.set_bn_mode("batch")
    with torch.no_grad():
        base = pose_guider(x[:, :, :2], ref)
        for other in (None, torch.randn(ref.shape, generator=torch.manual_seed(1), dtype=F64)):
            alt = pose_guider(x[:, :, :2], other)
            assert all(torch.equal(a, b) for a, b in zip(base, alt))
        # the pose cache's premise: one copy has the statistics of the duplicated CFG batch
        one = pose_guider(x, None)
    for k in range(5):
        fx.close(one[k].numpy(), z[f"train_x509_fea{k}"][:1], rel=1e-8, what=f"batch-1 fea{k}")


def test_pose_guider_loads_strictly(pose_guider):
    from a2pcli.aniportrait.pose_guider import build_pose_guider
    from a2pcli.errors import ModelError

    sd = dict(fx.weights("pose_guider")["pose_guider.pth"])
    cfg = fx.configs()["pose_guider"]
    keys = set(pose_guider.state_dict().keys())
    assert keys == set(sd), "the module's keys are the checkpoint's keys"
    small = {k: v for k, v in sd.items() if not k.startswith("cross_attn")}
    with pytest.raises(ModelError, match="missing"):
        build_pose_guider(cfg, small, dtype=F64)
    with pytest.raises(ModelError, match="unexpected"):
        build_pose_guider(cfg, {**sd, "cross_attn1.transformer_blocks.0.attn2.to_q.weight": sd["scale"]}, dtype=F64)


# ---------------------------------------------------------------------------------------------
# rung 8: the sampler


class MemoPoseGuider(torch.nn.Module):
    """Test-only: the PoseGuider is a pure function of its input frames (and BatchNorm mode), so
    identical calls across sampler runs and steps are served from a memo keyed by the input's exact
    bytes. The sampler still makes every call (it counts them); only the repeated 128 M-parameter
    float64 forward passes are skipped, which keeps this file's CPU time down."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.memo: dict = {}

    def set_bn_mode(self, mode):
        self.inner.set_bn_mode(mode)
        return self

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):
        return self.inner.device

    def forward(self, x, ref_x=None):
        import hashlib

        key = (self.inner.bn_mode, tuple(x.shape), hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest())
        if key not in self.memo:
            self.memo[key] = self.inner(x, ref_x)
        return [t.clone() for t in self.memo[key]]


@pytest.fixture(scope="module")
def models():
    import dataclasses

    from a2pcli.aniportrait.sampler import build_models

    m = build_models(fx.configs(), fx.weights(), dtype=F64)
    return dataclasses.replace(m, pose_guider=MemoPoseGuider(m.pose_guider))


_RUNS: dict = {}


def _run(models, variant: str, mode: str):
    """One sampler run on a fixture variant (once per session): mode "compat" (the original
    exactly; fp16 bank rounding as the variant says) or "savings" (the exact savings on)."""
    if (variant, mode) not in _RUNS:
        _RUNS[variant, mode] = _run_once(models, variant, mode)
    return _RUNS[variant, mode]


def _run_once(models, variant: str, mode: str):
    from a2pcli.aniportrait.config import AniPortraitConfig
    from a2pcli.aniportrait.sampler import Pose2VideoSampler

    info = fx.summary()["fixtures"]["sampler"]["info"]
    v = info["variants"][variant]
    z = fx.arrays("sampler.npz")
    common = dict(dtype="fp64", width=info["width"], height=info["height"], steps=info["num_inference_steps"],
                  guidance_scale=v["cfg"], bank_fp16_round=v["bank_fp16_rounding"])
    if mode == "compat":
        cfg = AniPortraitConfig.compat(**common)
    elif mode == "low_vram":
        cfg = AniPortraitConfig(**common, sequential_cfg=True, offload=True)
    elif mode == "window_batch":
        cfg = AniPortraitConfig(**common, window_batch=4, vae_decode_batch=4)
    else:
        cfg = AniPortraitConfig(**common, reference_cond_only=True, pose_cache=True, vae_decode_batch=4)
    events = []
    n = v["frames"]
    with pytest.MonkeyPatch.context() as mp:  # the oracle's float32 DDIM tables: the same on any CPU
        mp.setattr("a2pcli.aniportrait.sampler.build_scheduler", fx.fixture_ddim)
        result = Pose2VideoSampler(models, cfg)(
            z["ref_image_uint8_rgb"], list(z["pose_images_uint8_bgr"][:n]), z["ref_pose_uint8_bgr"],
            init_noise=t64(z[f"{variant}__init_noise"]), progress=events.append, trace=True,
            decode=variant == "bank64")
    return result, events


def _check_run(result, variant, tol):
    z = fx.arrays("sampler.npz")
    info = fx.summary()["fixtures"]["sampler"]["info"]["variants"][variant]
    assert result.windows == info["windows"]
    assert result.trace["step_timesteps"].tolist() == z[f"{variant}__step_timesteps"].tolist()
    fx.close(result.trace["step_guided_model_output"][:, :].numpy(), z[f"{variant}__step_guided_model_output"],
             rel=tol, what=f"{variant} guided v-predictions")
    fx.close(result.trace["step_latents_after"].numpy(), z[f"{variant}__step_latents_after"], rel=tol,
             what=f"{variant} latents after each step")
    fx.close(result.latents.numpy(), z[f"{variant}__final_latents"], rel=tol, what=f"{variant} final latents")


def test_sampler_compat_bank64_reproduces_every_stage(models):
    """The original pipeline exactly (float64 bank), every recorded stage of the oracle."""
    result, events = _run(models, "bank64", "compat")
    z = fx.arrays("sampler.npz")
    tr = result.trace
    p = "bank64__"
    assert np.array_equal(tr["clip_pixel_values"].double().numpy(), z[p + "clip_pixel_values"])
    fx.close(tr["clip_image_embeds"].numpy(), z[p + "clip_image_embeds"], what="CLIP image embeds")
    assert np.array_equal(tr["vae_encode_input"].numpy(), z[p + "vae_encode_input"])
    fx.close(tr["ref_latents"].numpy(), z[p + "ref_latents"], what="reference latents")
    bank = tr["bank"]
    bank_keys = sorted(k[len(p + "bank__"):] for k in z if k.startswith(p + "bank__"))
    assert sorted(bank.paths) == bank_keys and len(bank_keys) == 16
    for path in bank_keys:
        fx.close(bank[path].numpy(), z[p + "bank__" + path], what=f"bank {path}")
    fx.close(tr["unet_call_outputs"].numpy(), z[p + "unet_call_outputs"], what="denoiser outputs per call")
    _check_run(result, "bank64", SAMPLER_TOL)
    # PoseGuider on every window at every step (6 calls); progress once per window per step
    assert tr["pose_guider_calls"] == 6
    assert [(e.step, e.window) for e in events if e.stage == "denoise"] == [(s, w) for s in (1, 2, 3) for w in (1, 2)]
    # the video: decoded one frame at a time, float32
    video = result.video
    assert video.dtype == torch.float32
    np.testing.assert_allclose(video.numpy(), z[p + "video"], rtol=0, atol=2e-7)


def test_sampler_savings_stay_within_tolerance_of_compat(models):
    """Cond-only reference write, PoseGuider once per window (one CFG copy, reused at every step)
    and batched VAE decode, against the oracle (= compat) and our compat run."""
    result, events = _run(models, "bank64", "savings")
    compat, _ = _run(models, "bank64", "compat")
    _check_run(result, "bank64", SAVINGS_TOL)
    assert result.trace["pose_guider_calls"] == 2, "one PoseGuider call per window"
    assert result.trace["bank"].cond_only
    fx.close(result.latents.numpy(), compat.latents.numpy(), rel=SAVINGS_TOL, what="savings vs compat")
    np.testing.assert_allclose(result.video.numpy(), compat.video.numpy(), rtol=0, atol=2e-7)
    assert len([e for e in events if e.stage == "decode"]) == 5  # 20 frames, 4 per call


def test_low_vram_sequencing_gives_the_same_video(models):
    """--low-vram: the guidance halves as two batch-1 calls (offloading is a no-op on the CPU)."""
    result, _ = _run(models, "bank64", "low_vram")
    _check_run(result, "bank64", SAVINGS_TOL)


def test_windows_batched_into_one_denoiser_call_give_the_same_video(models):
    """window_batch: the windows of a step go through the denoiser together ([uncond windows, cond
    windows] in one batch): one call per step instead of one per window, the oracle's numbers, each
    window's prediction (against the original's one window per call) and progress reported as before."""
    calls = []
    hook = models.denoiser.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    try:
        result, events = _run(models, "bank64", "window_batch")
    finally:
        hook.remove()
    _check_run(result, "bank64", SAVINGS_TOL)
    alone, _ = _run(models, "bank64", "compat")
    fx.close(result.trace["unet_call_outputs"].numpy(), alone.trace["unet_call_outputs"].numpy(),
             rel=SAVINGS_TOL, what="per-window predictions, batched vs one window per call")
    np.testing.assert_allclose(result.video.numpy(), alone.video.numpy(), rtol=0, atol=2e-7)
    if calls:  # empty when an earlier test ran this variant first (runs are shared)
        assert calls == [4] * 3, "3 steps, each one call with both windows' uncond and cond rows"
    assert [(e.step, e.window) for e in events if e.stage == "denoise"] == [(s, w) for s in (1, 2, 3) for w in (1, 2)]


def test_window_chunks_group_windows_of_one_length_in_order():
    from a2pcli.aniportrait.sampler import chunks

    w16, w5 = list(range(16)), list(range(5))
    assert chunks([w16] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert chunks([w16, w16, w5, w16], 4) == [[0, 1], [2], [3]]
    assert chunks([w16] * 3, 1) == [[0], [1], [2]]


def test_initial_noise_is_the_pipelines_draw(models):
    """Without injection the sampler draws what the pipeline drew (torch.manual_seed(42 + SEED))."""
    from a2pcli.aniportrait.config import AniPortraitConfig
    from a2pcli.aniportrait.sampler import Pose2VideoSampler

    z = fx.arrays("sampler.npz")
    info = fx.summary()["fixtures"]["sampler"]["info"]
    sampler = Pose2VideoSampler(models, AniPortraitConfig(dtype="fp64"))
    for variant in VARIANTS:
        expected = z[f"{variant}__init_noise"]
        drawn = sampler.initial_noise(expected.shape[2], info["height"], info["width"], info["seed_torch_manual_seed"])
        assert np.array_equal(drawn.numpy(), expected), variant


@pytest.mark.parametrize("variant", ["faithful_fp16bank", "nocfg_bank64", "n5_bank64"])
def test_sampler_variants(models, variant):
    """fp16-rounded bank (the original default), CFG off (overlapping windows summed, not averaged)
    and a single 5-frame window (the uncond mask rebuilt), with the exact savings on."""
    result, _ = _run(models, variant, "savings")
    _check_run(result, variant, SAVINGS_TOL)
    if variant == "faithful_fp16bank":
        bank64 = fx.arrays("sampler.npz")["bank64__final_latents"]
        assert np.abs(result.latents.numpy() - bank64).max() > 1e-7, "fp16 rounding must show"


# ---------------------------------------------------------------------------------------------
# rung 9: VAE


@pytest.fixture(scope="module")
def vae():
    from a2pcli.aniportrait.vae import build_vae

    return build_vae(fx.configs()["vae_AutoencoderKL"], fx.weights("vae")["vae"], dtype=F64)


def test_vae_decode_batched_equals_per_frame(vae):
    from a2pcli.aniportrait.vae import decode_latents

    z = fx.arrays("vae_decode.npz")
    lat = t64(z["latents"])
    per_frame = decode_latents(vae, lat, batch=1)
    assert per_frame.dtype == torch.float32
    np.testing.assert_allclose(per_frame.numpy(), z["video_per_frame_f32"], rtol=0, atol=1e-7)
    batched = decode_latents(vae, lat, batch=6, float32=False)
    assert batched.dtype == F64
    fx.close(batched.numpy(), z["video_batched_f64"], what="batched float64 decode")
    uneven = decode_latents(vae, lat, batch=4)
    np.testing.assert_allclose(uneven.numpy(), z["video_per_frame_f32"], rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# CLIP checkpoint names and the config


def test_clip_transformers_430_names_load():
    from a2pcli.aniportrait.clip import POSITION_IDS, build_image_encoder, convert_clip_state_dict
    from a2pcli.errors import ModelError

    sd = fx.weights("image_encoder")["image_encoder"]
    assert POSITION_IDS in sd
    enc = build_image_encoder(fx.configs()["clip_CLIPVisionConfig"], sd, dtype=F64)
    model_keys = set(enc.state_dict().keys())
    converted = convert_clip_state_dict(sd, model_keys)
    assert set(converted) == model_keys
    if POSITION_IDS not in model_keys:
        with pytest.raises(ModelError, match="position_ids"):
            convert_clip_state_dict({**sd, POSITION_IDS: sd[POSITION_IDS].flip(-1)}, model_keys)


def test_config_defaults_and_validation():
    from a2pcli.aniportrait.config import INFERENCE_V2_SCHEDULER_KWARGS, AniPortraitConfig
    from a2pcli.errors import InputError

    c = AniPortraitConfig()
    assert (c.steps, c.guidance_scale, c.context_frames, c.context_overlap, c.context_stride, c.fps) == (
        25, 3.5, 16, 4, 1, 30)
    assert c.windows == "closed_loop" and c.pose_bn == "batch" and c.pose_input_scale == "uint8_quirk"
    assert c.scheduler_kwargs == INFERENCE_V2_SCHEDULER_KWARGS == fx.configs()["scheduler_DDIMScheduler"]
    compat = AniPortraitConfig.compat()
    assert compat.bank_fp16_round and not compat.pose_cache and not compat.reference_cond_only
    assert compat.vae_decode_batch == 1 and compat.nocfg_overlap == "sum"
    assert c.validate() is c
    for bad in (dict(pose_bn="eval"), dict(windows="wrap"), dict(context_overlap=16), dict(width=100)):
        with pytest.raises(InputError):
            AniPortraitConfig(**bad).validate()
