"""The audio2motion model: the shipped one loads and behaves (lengths, silence, speech, determinism,
corrupt files), and the tiny training preset runs the whole loop (prepare, train, checkpoint, resume,
export) on two short shared clips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from a2pcli import audio2motion, features
from a2pcli.audio2motion import WEIGHTS_FILE, load_model
from a2pcli.errors import ModelError
from a2pcli.facemesh import FOREHEAD, LEFT_BROW, LEFT_EYE_UPPER, RIGHT_BROW, RIGHT_EYE_UPPER
from a2pcli.landmarks import mouth_opening
from tests.conftest import EXAMPLE_SPEECH, ffmpeg_exe, media, run_a2p

SR = features.SAMPLE_RATE


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def reference():
    from a2pcli.headpose import load_reference

    return load_reference().mean


@pytest.fixture(scope="module")
def speech():
    from a2pcli.audio import load_audio

    return load_audio(media("sadtalker_RD_Radio31_000.wav", fallback=EXAMPLE_SPEECH), SR)


def _babble(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: a voiced buzz whose loudness comes and goes at syllable rate."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    buzz = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / SR)) * 0.3 + 0.05 * rng.standard_normal(len(t))
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    return (buzz * env).astype(np.float32)


@pytest.mark.parametrize("seconds,fps", [(0.5, 25.0), (5.0, 25.0), (5.0, 30.0), (10.0, 29.97)])
def test_predicts_one_frame_per_video_frame(model, seconds, fps):
    audio = _babble(seconds)
    out = model.predict(audio, fps)
    assert out.shape == (int(round(seconds * fps)), 478, 3) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert model.predict(audio, fps, n_frames=7).shape == (7, 478, 3)


def test_config_meta_and_size(model):
    assert model.config.n_codes == model.basis.shape[0]
    assert "data" in model.meta and "validation" in model.meta
    folder = model.path
    assert (folder / WEIGHTS_FILE).stat().st_size < 5 << 20


def test_silence_keeps_the_mouth_closed(model, reference):
    for audio in (np.zeros(3 * SR, np.float32), 1e-5 * _babble(3.0)):  # digital silence, -90 dBFS hiss
        delta = model.predict(audio, 25.0)
        assert np.abs(delta).max() < 1e-3
        assert np.abs(mouth_opening(reference + delta) - mouth_opening(reference)).max() < 1e-3


def test_only_the_lower_face_moves(model, speech):
    delta = model.predict(speech[: 4 * SR], 25.0)
    upper = np.concatenate([FOREHEAD, LEFT_BROW, RIGHT_BROW, LEFT_EYE_UPPER, RIGHT_EYE_UPPER])
    assert np.abs(delta[:, upper]).max() == 0.0
    assert np.abs(delta).max() > 0.01


def test_speech_opens_and_closes_the_mouth(model, reference, speech):
    delta = model.predict(speech, 25.0)
    opening = mouth_opening(reference + delta)
    base = mouth_opening(reference)
    assert np.percentile(opening, 90) - base > 0.05, "the mouth opens during speech"
    assert opening.std() > 0.02, "the opening varies with the syllables"
    assert np.percentile(opening, 10) - base < 0.05, "and comes back near closed"


def test_deterministic(model, speech):
    a = model.predict(speech[: 3 * SR], 30.0)
    b = model.predict(speech[: 3 * SR].copy(), 30.0)
    assert np.array_equal(a, b)


def test_loudness_does_not_matter(model, speech):
    # recorded speech only: on the synthesised example the quieter copy moves the lips up to 0.04 apart
    media("sadtalker_RD_Radio31_000.wav")
    a = model.predict(speech[: 4 * SR], 25.0)
    b = model.predict(speech[: 4 * SR] * 0.05, 25.0)  # 26 dB quieter
    assert np.abs(a - b).max() < 0.02  # face units: under 2 px on a face 100 px wide between the eye corners


def test_long_input_is_chunked_consistently(model, speech):
    """Beyond one network chunk (60 s) the output equals that of the same audio in one piece."""
    long = np.tile(speech, int(np.ceil(70 * SR / len(speech))))[: 70 * SR]
    out = model.predict(long, 25.0)
    assert out.shape[0] == 1750
    head = model.predict(long[: 20 * SR], 25.0)
    # far from the 20 s cut, same context; the per-utterance feature statistics differ a little
    assert np.abs(out[:400] - head[:400]).max() < 5e-3


def test_bad_inputs(model):
    from a2pcli.errors import InputError

    with pytest.raises(InputError):
        model.predict(np.zeros((2, 100), np.float32), 25.0)
    with pytest.raises(InputError):
        model.predict(np.zeros(100, np.float32), 0.0)
    assert model.predict(np.zeros(0, np.float32), 25.0).shape == (0, 478, 3)


def _copy_model(tmp_path):
    folder = tmp_path / "a2m"
    shutil.copytree(load_model().path, folder, ignore=shutil.ignore_patterns("README.md"))
    return folder


def test_corrupt_weights_folder(tmp_path):
    folder = _copy_model(tmp_path)
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as exc:
        load_model(str(folder))
    msg = exc.value.one_line()
    assert str(folder / WEIGHTS_FILE) in msg and "a2p models verify" in msg


def test_missing_weights_folder(tmp_path):
    folder = _copy_model(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError) as exc:
        load_model(str(folder))
    assert WEIGHTS_FILE in exc.value.one_line() and "a2p models verify" in exc.value.one_line()


def test_corrupt_shipped_model_is_caught_by_its_hash(tmp_path, monkeypatch):
    from a2pcli import registry
    from a2pcli.paths import shipped_models_dir

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(shipped_models_dir() / "registry.json", models / "registry.json")
    shutil.copytree(shipped_models_dir() / "audio2motion", models / "audio2motion")
    weights = models / "audio2motion" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(registry, "shipped_models_dir", lambda: models)
    with pytest.raises(ModelError) as exc:
        load_model()
    msg = exc.value.one_line()
    assert str(weights) in msg and "a2p models verify" in msg


# --- training ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two 2-s talking clips (with sound) cut from a shared video, as two 'speakers'."""
    src = media("sadtalker_WDA_KatieHill_000.mp4")
    root = tmp_path_factory.mktemp("a2m-data") / "clips"
    for spk, start in (("spk_a", 0.0), ("spk_b", 3.0)):
        (root / spk).mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", str(start), "-t", "2", "-i", str(src), "-vf",
                        "scale=256:256", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                        str(root / spk / f"{spk}.mp4")], check=True)
    return root


@pytest.mark.slow
def test_tiny_preset_trains_checkpoints_resumes_and_exports(tiny_data, tmp_path):
    out = tmp_path / "model"
    args = ["train", "audio2motion", "--data", tiny_data, "-o", out, "--preset", "tiny", "--device", "cpu",
            "--val-speakers", "spk_b", "--json"]
    proc = run_a2p(*args, check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 2 and s["steps"] == 6
    assert s["data"]["train"]["speakers"] == 1 and s["data"]["val"]["speakers"] == 1
    assert "val_mouth_r" in s["validation"], proc.stderr
    assert "epoch 2/2" in proc.stderr and "mouth-opening r" in proc.stderr
    ckpt = out / "checkpoints" / "last.pt"
    cache = Path(os.environ["A2P_CACHE_DIR"]) / "train-data"
    assert ckpt.is_file() and len(list(cache.glob("*.npz"))) == 2, "the prepared clips go to the shared data cache"
    assert not (out / "cache").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]

    first = load_model(str(out))
    proc = run_a2p(*args, "--resume", out, "--epochs", "3", check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 3 and s["steps"] == 9
    assert "resumed from" in proc.stderr

    import torch

    from a2pcli.train.core import load_checkpoint

    torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors, numbers and text only
    state = load_checkpoint(ckpt, "audio2motion")
    assert state.meta["epoch"] == 3 and state.meta["step"] == 9 and state.model and state.optimizer["state"]
    assert set(state.meta) >= {"config", "preset", "split", "targets", "history"}
    model = load_model(str(out))
    import dataclasses

    # the output gain is re-calibrated on the training set at the end of every run
    assert dataclasses.replace(model.config, output_gain=first.config.output_gain) == first.config
    delta = model.predict(_babble(1.0), 25.0)
    assert delta.shape == (25, 478, 3) and np.isfinite(delta).all()


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    from a2pcli.progress import Reporter
    from a2pcli.train.audio2motion import TrainOptions, train

    def run(out, reporter=None, resume=None):
        opts = TrainOptions(data=(tiny_data,), output=out, preset="tiny", epochs=2, seed=3, val_speakers=("spk_b",),
                            device="cpu", resume=resume)
        return train(opts, reporter)

    def stop_after_epoch_1(ev):
        if ev["event"] == "info" and ev["message"].startswith("epoch 1/2"):
            raise KeyboardInterrupt

    run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", Reporter(stop_after_epoch_1))
    assert not (tmp_path / "b" / WEIGHTS_FILE).exists()
    run(tmp_path / "b", resume=tmp_path / "b")
    from safetensors.numpy import load_file

    a, b = load_file(tmp_path / "a" / WEIGHTS_FILE), load_file(tmp_path / "b" / WEIGHTS_FILE)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-4, worst  # the same run up to float summation order
