"""`--renderer aniportrait` end to end through the CLI on the CPU, with a tiny pretrained_model folder.

The folder has AniPortrait's layout and file names; its checkpoints are the fixtures' deterministic
tiny weights (the recipe), saved the way the released files are (torch.save of AniPortrait-format
dicts, the VAE as diffusers safetensors). A 2-step render of one second of speech must produce a
playable video of the right length and size with the audio muxed; broken weights must fail before
anything is written, with the file (and the key) named.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests import aniportrait_fixtures as fx
from tests.conftest import ffmpeg_exe, media, run_a2p

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")


def _write_tiny_folder(dest):
    from safetensors.torch import save_file

    w = fx.weights()
    c = fx.configs()
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


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    fx.folder()
    return _write_tiny_folder(tmp_path_factory.mktemp("pretrained_model"))


@pytest.fixture(scope="module")
def speech_1s(tmp_path_factory):
    import soundfile as sf

    from a2pcli.encode import load_audio

    audio = load_audio(media("sadtalker_RD_Radio31_000.wav"), 16000, duration_s=1.0)
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    sf.write(path, audio, 16000)
    return path


def _probe(path):
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True)
    return proc.stderr


def _frames(path):
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


@pytest.mark.slow
def test_audio2video_aniportrait_tiny_end_to_end(tiny_folder, speech_1s, tmp_path):
    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "2", "--size", "64", "--device", "cpu",
                   "--progress", "json", "--json", check=0)
    summary = json.loads(proc.stdout)
    assert summary["renderer"] == "aniportrait" and summary["size"] == [64, 64]
    assert summary["frames"] == 25 and summary["windows"] == 3  # 25 frames: closed-loop windows start at 0, 12, 24
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    denoise = [e for e in events if e.get("stage") == "denoise"]
    assert denoise, "no progress from the denoising loop"
    assert any("eta_s" in e for e in denoise), "no ETA in the denoising progress"
    frames = _frames(out)
    assert frames.shape == (25, 64, 64, 3)
    assert frames.std() > 1.0  # decoded pictures, not a constant
    info = _probe(out)
    assert "Audio:" in info and "Video: h264" in info


def test_missing_weight_file_is_named_and_nothing_written(tiny_folder, speech_1s, tmp_path):
    import shutil

    broken = tmp_path / "pretrained_model"
    shutil.copytree(tiny_folder, broken)
    (broken / "pose_guider.pth").unlink()
    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", broken, "--steps", "2", "--size", "64", "--device", "cpu")
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "pose_guider.pth" in last
    assert not out.exists()


def test_renamed_key_is_named(tiny_folder, speech_1s, tmp_path):
    import shutil

    broken = tmp_path / "pretrained_model"
    shutil.copytree(tiny_folder, broken)
    sd = torch.load(broken / "reference_unet.pth", weights_only=True)
    sd["conv_in.weight_renamed"] = sd.pop("conv_in.weight")
    torch.save(sd, broken / "reference_unet.pth")
    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", broken, "--steps", "2", "--size", "64", "--device", "cpu")
    assert proc.returncode == 4, proc.stderr
    assert "conv_in.weight" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_no_pulled_model_says_how_to_get_it(speech_1s, tmp_path):
    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--device", "cpu")
    assert proc.returncode == 4, proc.stderr
    assert "a2p models pull aniportrait" in proc.stderr
    assert not out.exists()


def test_bad_size_is_refused_before_work(speech_1s, tmp_path):
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", tmp_path / "x.mp4",
                   "--renderer", "aniportrait", "--size", "100")
    assert proc.returncode == 2
    assert "--size" in proc.stderr


def test_vram_estimate_and_output_size():
    from a2pcli.aniportrait.render import output_size, vram_estimate

    assert output_size(512, 512, 512) == (512, 512)
    assert output_size(720, 1280, 512) == (288, 512)  # aspect kept, multiples of 8
    full = vram_estimate(512, 512, "fp16")
    low = vram_estimate(512, 512, "fp16", low_vram=True)
    assert low < full <= 12e9
    assert low <= 8e9


@pytest.mark.slow
def test_pose2vid_aniportrait_tiny_follows_a_template(tiny_folder, tmp_path):
    """pose2vid takes the same renderer: an AniPortrait head-pose template, cut to 20 frames."""
    from pathlib import Path

    template = np.load(Path(__file__).resolve().parents[1] / "examples" / "head_motion.npy")[:20]
    motion = tmp_path / "turn.npy"
    np.save(motion, template)
    out = tmp_path / "turn.mp4"
    proc = run_a2p("pose2vid", media("sadtalker_happy.png"), motion, "-o", out, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "2", "--size", "64", "--device", "cpu", "--json", check=0)
    summary = json.loads(proc.stdout)
    assert summary["renderer"] == "aniportrait" and summary["frames"] == 20
    assert _frames(out).shape == (20, 64, 64, 3)


@pytest.mark.slow
def test_fewer_steps_with_dpmpp_and_the_clean_alternatives(tiny_folder, speech_1s, tmp_path):
    out = tmp_path / "clean.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "2", "--size", "64", "--device", "cpu", "--scheduler", "dpmpp",
                   "--clean", "--json", check=0)
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 25 and summary["windows"] == 2  # windows that do not wrap: [0..15], [9..24]
    assert _frames(out).shape == (25, 64, 64, 3)
