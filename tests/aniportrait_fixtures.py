"""Access to AniPortrait's golden fixtures for the diffusion-renderer tests.

The folder comes from A2P_ANIPORTRAIT_FIXTURES (default: the shared fixtures folder), and the weight
seed from its manifest, so the same tests run unchanged against fixtures made with another seed.
Tests that need the folder skip with a message when it is absent.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED

FIXTURES = Path(os.environ.get("A2P_ANIPORTRAIT_FIXTURES", SHARED / "fixtures" / "aniportrait"))


def folder() -> Path:
    if not (FIXTURES / "weights_manifest.json").exists():
        pytest.skip(f"AniPortrait fixtures {FIXTURES} not present (set A2P_ANIPORTRAIT_FIXTURES)")
    return FIXTURES


def seed() -> int:
    return int(json.loads((folder() / "weights_manifest.json").read_text())["seed"])


@functools.lru_cache(maxsize=None)
def _npz(name: str) -> dict:
    with np.load(folder() / name) as z:
        return {k: z[k] for k in z.files}


def arrays(name: str) -> dict:
    """All arrays of `name` (e.g. "pose_guider.npz"), loaded once per test session."""
    return _npz(name)


def configs() -> dict:
    return json.loads((folder() / "configs.json").read_text())


def summary() -> dict:
    return json.loads((folder() / "summary.json").read_text())


@functools.lru_cache(maxsize=None)
def _weights(models: tuple[str, ...] | None) -> dict:
    from a2pcli.aniportrait.recipe import tiny_state_dicts

    return tiny_state_dicts(folder(), seed(), models=models)


def weights(*models: str) -> dict:
    """{ckpt namespace: {key: tensor}} of the tiny models named (manifest names such as
    "pose_guider"; none: all), rebuilt from the recipe once per session. Do not modify them."""
    return _weights(tuple(models) if models else None)


def close(actual, expected, rel: float = 1e-9, what: str = "") -> None:
    """|actual - expected| <= rel * max|expected|, with a message naming the worst element."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = max(float(np.abs(e).max()), 1e-300)
    err = float(np.abs(a - e).max())
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel:g} x {scale:.3g}"


def write_tiny_folder(dest):
    """A pretrained_model folder in AniPortrait's layout holding the tiny recipe weights, saved the
    way the released files are (torch.save of AniPortrait-format dicts, the VAE as safetensors)."""
    from safetensors.torch import save_file

    import torch

    w = weights()
    c = configs()
    dest.mkdir(parents=True, exist_ok=True)

    def f32(sd):
        return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}

    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "pose_guider.pth",
                 "audio2mesh.pt", "audio2pose.pt"):
        torch.save(f32(w[name]), dest / name)
    (dest / "stable-diffusion-v1-5" / "unet").mkdir(parents=True)
    (dest / "stable-diffusion-v1-5" / "unet" / "config.json").write_text(json.dumps(c["unet_2d_and_3d_base"]))
    (dest / "sd-vae-ft-mse").mkdir()
    (dest / "sd-vae-ft-mse" / "config.json").write_text(json.dumps(c["vae_AutoencoderKL"]))
    save_file(f32(w["vae"]), str(dest / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"))
    (dest / "image_encoder").mkdir()
    (dest / "image_encoder" / "config.json").write_text(json.dumps(c["clip_CLIPVisionConfig"]))
    torch.save(f32(w["image_encoder"]), dest / "image_encoder" / "pytorch_model.bin")
    (dest / "wav2vec2-base-960h").mkdir()
    (dest / "wav2vec2-base-960h" / "config.json").write_text(json.dumps(c["wav2vec2"]))
    (dest / "wav2vec2-base-960h" / "preprocessor_config.json").write_text(json.dumps(c["wav2vec2_preprocessor"]))
    enc = {k[len("audio_encoder."):]: v for k, v in w["audio2mesh.pt"].items() if k.startswith("audio_encoder.")}
    torch.save(f32(enc), dest / "wav2vec2-base-960h" / "pytorch_model.bin")
    return dest


def speech_wav(dest, seconds: float = 1.0):
    """(path, samples): the first `seconds` of a shared speech clip as a 16 kHz wav in `dest`."""
    import soundfile as sf

    from a2pcli.audio import load_audio
    from tests.conftest import media

    audio = load_audio(media("sadtalker_RD_Radio31_000.wav"), 16000, duration_s=seconds)
    path = dest / "speech.wav"
    sf.write(path, audio, 16000)
    return path, audio


def video_frames(path) -> np.ndarray:
    """(N, H, W, 3) uint8 frames of a video file, decoded with the bundled ffmpeg."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


# --- float32 tables: error bounds from float32 rounding --------------------------------------------------

U32 = 2.0**-24  # float32 unit roundoff: each + - * / sqrt rounds to within U32 x |result|


def ddim_tables_with_bounds(kwargs: dict) -> dict:
    """diffusers' DDIM tables (linear betas, zero-terminal-SNR rescale, cumulative product) evaluated in
    float64, each with a first-order bound of the error that float32 evaluation may have: every
    operation's rounding (U32 x |result|) plus its operands' errors carried through the operation.
    Two correct float32 implementations (torch's vectorised kernels differ per instruction set: the
    linspace formula, the order of operations) both lie within the bound of the float64 value.
    Returns {"betas", "alphas_cumprod"} -> (value, bound), float64 arrays."""
    assert kwargs["beta_schedule"] == "linear" and kwargs["rescale_betas_zero_snr"]
    n, b0, b1 = int(kwargs.get("num_train_timesteps", 1000)), float(kwargs["beta_start"]), float(kwargs["beta_end"])
    u = U32
    # linspace: start + i*step or end - (n-1-i)*step, step = (end-start)/(n-1) rounded
    betas = np.linspace(b0, b1, n)
    e = 3 * u * (abs(b0) + abs(b1)) + u * np.abs(betas)

    def prod(x, ex):  # cumulative product with its running error
        p, ep = np.empty_like(x), np.empty_like(x)
        p[0], ep[0] = x[0], ex[0]
        for t in range(1, len(x)):
            p[t] = p[t - 1] * x[t]
            ep[t] = abs(x[t]) * ep[t - 1] + abs(p[t - 1]) * ex[t] + u * abs(p[t])
        return p, ep

    # rescale_zero_terminal_snr
    alphas, e = 1.0 - betas, e + u * np.abs(1.0 - betas)
    abar, e = prod(alphas, e)
    s = np.sqrt(abar)
    e = e / (2 * s) + u * s
    s0, sT, e0, eT = s[0], s[-1], e[0], e[-1]
    shifted = s - sT
    e = e + eT + u * np.abs(shifted)
    shifted[-1], e[-1] = 0.0, 0.0  # x - x is exactly 0 in any arithmetic
    d = s0 - sT
    ed = e0 + eT + u * abs(d)
    k = s0 / d
    ek = e0 / abs(d) + abs(s0) * ed / d**2 + u * abs(k)
    scaled = shifted * k
    e = abs(k) * e + np.abs(shifted) * ek + u * np.abs(scaled)
    abar2 = scaled**2
    e = 2 * np.abs(scaled) * e + u * abar2
    ratio = np.concatenate([abar2[:1], abar2[1:] / abar2[:-1]])
    er = np.concatenate([e[:1], e[1:] / abar2[:-1] + abar2[1:] * e[:-1] / abar2[:-1] ** 2 + u * ratio[1:]])
    betas = 1.0 - ratio
    eb = er + u * np.abs(betas)
    # the scheduler: alphas = 1 - betas, alphas_cumprod = cumprod(alphas)
    alphas, ea = 1.0 - betas, eb + u * np.abs(1.0 - betas)
    ac, eac = prod(alphas, ea)
    return {"betas": (betas, eb), "alphas_cumprod": (ac, eac)}


def fixture_ddim(kind: str = "ddim", kwargs: dict | None = None):
    """build_scheduler(...) with its float32 tables replaced by the oracle's own (scheduler.npz): the
    float64 rungs downstream then see the same coefficients on any CPU, while the tables themselves are
    checked with float32 tolerances (test_ddim_scheduler_tables_timesteps_and_steps)."""
    import torch

    from a2pcli.aniportrait.scheduler import build_scheduler

    s = build_scheduler(kind, kwargs)
    z = arrays("scheduler.npz")
    if kind == "ddim":
        s.betas = torch.from_numpy(z["betas"].copy())
        s.alphas = 1.0 - s.betas
        s.alphas_cumprod = torch.from_numpy(z["alphas_cumprod"].copy())
    return s
