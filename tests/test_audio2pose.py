"""The audio2pose model: the shipped one loads and generates head motion (lengths, seeds, long input,
corrupt files); a render's head moves more with it than with the hand-made rule and repeats for a seed; the
tiny training preset runs the whole loop (prepare, train, checkpoint, resume, export) on two short clips."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from a2pcli import features
from a2pcli.audio2pose import N_POSE, WEIGHTS_FILE, load_model
from a2pcli.errors import InputError, ModelError
from tests.conftest import ffmpeg_exe, media, run_a2p

SR = features.SAMPLE_RATE


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def speech():
    from a2pcli.encode import load_audio

    return load_audio(media("sadtalker_RD_Radio31_000.wav"), SR)


@pytest.mark.parametrize("seconds,fps", [(0.3, 25.0), (5.0, 25.0), (5.0, 30.0), (3.0, 29.97)])
def test_generates_one_pose_per_video_frame(model, speech, seconds, fps):
    out = model.generate(speech[: int(seconds * SR)], fps)
    assert out.shape == (int(round(seconds * fps)), N_POSE) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert model.generate(speech[: SR], fps, n_frames=7).shape == (7, N_POSE)
    assert model.generate(np.zeros(0, np.float32), fps, n_frames=3).shape == (3, N_POSE)


def test_a_seed_picks_one_motion_and_repeats_it(model, speech):
    a = model.generate(speech, 25.0, seed=1)
    b = model.generate(speech.copy(), 25.0, seed=1)
    c = model.generate(speech, 25.0, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 0.1 * np.abs(a).mean(), "another seed, another motion"


def test_the_head_turns_nods_and_tilts_by_degrees_not_tenths(model, speech):
    yaw_pitch_roll = model.generate(speech, 25.0, seed=0)[:, :3]
    assert (yaw_pitch_roll.std(0) > 0.5).all() and (np.abs(yaw_pitch_roll).max(0) < 30).all()
    assert np.abs(yaw_pitch_roll.mean(0)).max() < 6, "about the portrait's own pose"


def test_long_input_is_chunked_exactly(model, speech, monkeypatch):
    """Long speech runs through the network in chunks (bounded memory); the overlaps make the result equal
    to one pass over the whole input."""
    from a2pcli import audio2pose

    inputs = audio2pose.speech_inputs(np.tile(speech, 2))
    one_pass = model.generate_normalised(inputs, seed=3)
    monkeypatch.setattr(audio2pose, "CHUNK_FRAMES", 64)  # 400 pose frames in 7 chunks
    chunked = model.generate_normalised(inputs, seed=3)
    assert np.abs(one_pass - chunked).max() < 1e-4


def test_bad_inputs(model):
    with pytest.raises(InputError):
        model.generate(np.zeros((2, 100), np.float32), 25.0)
    with pytest.raises(InputError):
        model.generate(np.zeros(100, np.float32), 0.0)
    with pytest.raises(InputError):
        model.generate(np.zeros(100, np.float32), 25.0, seed=-1)


def test_corrupt_or_missing_weights_name_the_file(tmp_path):
    folder = tmp_path / "a2p"
    shutil.copytree(load_model().path, folder, ignore=shutil.ignore_patterns("README.md"))
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as exc:
        load_model(str(folder))
    assert str(folder / WEIGHTS_FILE) in exc.value.one_line() and "a2p models verify" in exc.value.one_line()
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError):
        load_model(str(folder))


# --- in a render ---------------------------------------------------------------------------------------


def _target_euler(speech, opts, head_motion=None):
    from a2pcli.headpose import euler_from_matrix, load_reference
    from a2pcli.retarget import PortraitFace
    from a2pcli.talk import talk_targets

    ref = load_reference()
    face = PortraitFace(landmarks=ref.mean * 100 + 256, rotation=np.eye(3, dtype=np.float32),
                        translation=np.array([256.0, 256.0, 0.0], np.float32), scale=100.0, canon=ref.mean.copy())
    n = int(len(speech) / SR * 25)
    lips = np.zeros((n, *ref.mean.shape), np.float32)
    tgt, _ = talk_targets(face, speech, 25.0, n, lips, opts, ref.mean, head_motion=head_motion)
    return euler_from_matrix(tgt.rotation), tgt.translation


def test_the_model_moves_the_head_more_than_the_hand_made_rule_and_repeats_for_a_seed(model, speech):
    from a2pcli.talk import TalkOptions

    opts = TalkOptions(seed=5)
    n = int(len(speech) / SR * 25)
    learned, shift = _target_euler(speech, opts, model.generate(speech, 25.0, n, seed=5))
    again, _ = _target_euler(speech, opts, model.generate(speech, 25.0, n, seed=5))
    rule, rule_shift = _target_euler(speech, TalkOptions(seed=5, head="rule"))
    assert np.array_equal(learned, again)
    assert learned.std(0).sum() > 1.5 * rule.std(0).sum(), (learned.std(0), rule.std(0))
    assert np.abs(np.diff(learned, axis=0)).mean() > np.abs(np.diff(rule, axis=0)).mean()
    assert shift[:, 0].std() > rule_shift[:, 0].std(), "the model also moves the head sideways"


def test_pose_scale_and_still_apply_to_the_model(model, speech):
    from a2pcli.talk import TalkOptions

    n = int(len(speech) / SR * 25)
    head = model.generate(speech, 25.0, n, seed=0)
    full, _ = _target_euler(speech, TalkOptions(), head)
    half, _ = _target_euler(speech, TalkOptions(pose_scale=0.5), head)
    still, _ = _target_euler(speech, TalkOptions(still=True), head)
    assert np.allclose(half.std(0), 0.5 * full.std(0), rtol=0.05, atol=0.02)
    assert np.abs(still).max() < 1e-3


def test_audio2video_seeds_give_different_head_motion(tmp_path):
    """Through the CLI: two seeds, two head motions (and the hand-made rule on request)."""
    from tests.test_animate import read_video

    import soundfile as sf

    from a2pcli.encode import load_audio

    portrait = media("sadtalker_happy.png")
    speech = tmp_path / "speech.wav"
    sf.write(speech, load_audio(media("sadtalker_RD_Radio31_000.wav"), SR, duration_s=2.5), SR)
    frames = {}
    for name, extra in (("s1", ["--seed", "1"]), ("s2", ["--seed", "2"]), ("rule", ["--head", "rule"])):
        out = tmp_path / f"{name}.mp4"
        run_a2p("audio2video", portrait, speech, "--crop", "--size", "96", "-o", out, "-q", *extra, check=0)
        frames[name] = read_video(out)[0].astype(np.float32)
    assert np.abs(frames["s1"] - frames["s2"]).mean() > 0.5
    proc = run_a2p("audio2video", portrait, speech, "--head", tmp_path / "nope", "-o", tmp_path / "x.mp4")
    assert proc.returncode == 4 and "nope" in proc.stderr


# --- training ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two 2-s talking clips (with sound) cut from a shared video, as two 'speakers'."""
    src = media("sadtalker_WDA_KatieHill_000.mp4")
    root = tmp_path_factory.mktemp("a2p-data") / "clips"
    for spk, start in (("spk_a", 0.0), ("spk_b", 3.0)):
        (root / spk).mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", str(start), "-t", "2", "-i", str(src), "-vf",
                        "scale=256:256", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                        str(root / spk / f"{spk}.mp4")], check=True)
    return root


@pytest.mark.slow
def test_tiny_preset_trains_checkpoints_resumes_and_exports(tiny_data, tmp_path):
    out = tmp_path / "model"
    args = ["train", "audio2pose", "--data", tiny_data, "-o", out, "--preset", "tiny", "--device", "cpu",
            "--val-speakers", "spk_b", "--json"]
    proc = run_a2p(*args, check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 2 and s["steps"] == 6
    assert s["data"]["train"]["speakers"] == 1 and s["data"]["val"]["speakers"] == 1
    assert "val_model_std_ratio" in s["validation"] and "val_rule_std_ratio" in s["validation"], proc.stderr
    assert "epoch 2/2" in proc.stderr and "onset r" in proc.stderr
    ckpt = out / "checkpoints" / "last.pt"
    assert ckpt.is_file() and len(list((out / "cache").glob("*.npz"))) == 2 and (out / "dataset.npz").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]

    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors, numbers and strings only
    assert set(state) == {"model", "ema", "optimizer", "run"} and json.loads(state["run"])["step"] == 6

    first = load_model(str(out))
    # resumed from the prepared dataset alone (what a GPU machine is given): the same clips, two more epochs
    proc = run_a2p("train", "audio2pose", "--data", out / "dataset.npz", "-o", out, "--preset", "tiny",
                   "--device", "cpu", "--resume", out, "--epochs", "3", "--json", check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 3 and s["steps"] == 9 and "resumed from" in proc.stderr
    model = load_model(str(out))
    assert model.config == first.config
    motion = model.generate(np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1, 25.0)
    assert motion.shape == (25, N_POSE) and np.isfinite(motion).all()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    from a2pcli.train_a2p import read_checkpoint

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "last.pt"
    bad.write_bytes(pickle.dumps({"run": Payload()}))
    with pytest.raises(InputError) as exc:
        read_checkpoint(bad)
    assert str(bad) in exc.value.one_line() and not marker.exists()
