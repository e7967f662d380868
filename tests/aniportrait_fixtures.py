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
