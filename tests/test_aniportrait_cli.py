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


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    fx.folder()
    return fx.write_tiny_folder(tmp_path_factory.mktemp("pretrained_model"))


@pytest.fixture(scope="module")
def speech_1s(tmp_path_factory):
    return fx.speech_wav(tmp_path_factory.mktemp("speech"))[0]


def _probe(path):
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True)
    return proc.stderr


@pytest.mark.slow
def test_audio2video_aniportrait_tiny_end_to_end(tiny_folder, speech_1s, tmp_path):
    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "2", "--size", "64", "--device", "cpu",
                   "--progress", "json", "--json", check=0)
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["renderer"] == "aniportrait" and summary["size"] == [64, 64]
    assert summary["frames"] == 25 and summary["windows"] == 3  # 25 frames: closed-loop windows start at 0, 12, 24
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    denoise = [e for e in events if e.get("stage") == "denoise"]
    assert denoise, "no progress from the denoising loop"
    assert any("eta_s" in e for e in denoise), "no ETA in the denoising progress"
    frames = fx.video_frames(out)
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
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["renderer"] == "aniportrait" and summary["frames"] == 20
    assert fx.video_frames(out).shape == (20, 64, 64, 3)


@pytest.mark.slow
def test_fewer_steps_with_dpmpp_and_the_clean_alternatives(tiny_folder, speech_1s, tmp_path):
    out = tmp_path / "clean.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "2", "--size", "64", "--device", "cpu", "--scheduler", "dpmpp",
                   "--clean", "--json", check=0)
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["frames"] == 25 and summary["windows"] == 2  # windows that do not wrap: [0..15], [9..24]
    assert fx.video_frames(out).shape == (25, 64, 64, 3)


@pytest.mark.slow
def test_acc_diffuses_every_other_frame_and_interpolates_the_rest(tiny_folder, speech_1s, tmp_path):
    out = tmp_path / "acc.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s, "-o", out, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "2", "--size", "64", "--device", "cpu", "--acc", "2",
                   "--compile", "--json", check=0)
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["frames"] == 25 and summary["acc"] == 2
    assert summary["diffused_frames"] == 13  # frames 0, 2, ..., 24
    assert summary["windows"] == 1  # 13 diffused frames fit one 16-frame window
    assert not summary["compiled"] and any("--compile" in n for n in summary["notes"])  # GPU only
    frames = fx.video_frames(out).astype(np.float64)
    assert frames.shape == (25, 64, 64, 3)
    # an in-between frame lies between its rendered neighbours, not a copy of either
    mid, a, b = frames[1], frames[0], frames[2]
    assert np.abs(mid - (a + b) / 2).mean() < np.abs(a - b).mean()


def test_acc_and_compile_belong_to_the_diffusion_renderer(tmp_path):
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), media("sadtalker_RD_Radio31_000.wav"), "-o",
                   tmp_path / "x.mp4", "--acc", "2", check=2)
    assert "--acc" in proc.stderr and "--renderer aniportrait" in proc.stderr
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.slow
def test_a_batch_reads_the_weights_once(tiny_folder, speech_1s, tmp_path):
    faces = [media("sadtalker_happy.png"), media("liveportrait_s9.jpg")]
    proc = run_a2p("audio2video", *faces, speech_1s, "-o", tmp_path, "--renderer", "aniportrait",
                   "--weights", tiny_folder, "--steps", "1", "--size", "64", "--device", "cpu",
                   "--progress", "json", "--json", check=0)
    summary = json.loads(proc.stdout)
    assert len(summary["outputs"]) == 2 and not summary["failed"]
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    loads = [e for e in events if e.get("stage") == "load weights" and e.get("done") == 0]
    assert len(loads) == 1, f"weights loaded {len(loads)} times for two portraits"
    for out in summary["outputs"]:
        assert fx.video_frames(out["output"]).shape[0] == 25
