"""The audio2pose model: the shipped one loads and generates head motion (lengths, seeds, long input, corrupt
files); different speech gives different motion; in audio2video (the library pipeline) the head moves more
with it than with the hand-made rule and repeats exactly for a seed; --head is checked like every option; the
tiny training preset runs the whole loop (prepare, train, checkpoint, resume from the prepared dataset, export)
on two short clips."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import numpy as np
import pytest

from a2pcli import features
from a2pcli.audio2pose import N_POSE, WEIGHTS_FILE, load_model
from a2pcli.errors import InputError, ModelError
from tests.conftest import EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, driving_video, ffmpeg_exe, media, run_a2p

SR = features.SAMPLE_RATE


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def speech():
    from a2pcli.audio import load_audio

    return load_audio(media("sadtalker_RD_Radio31_000.wav", fallback=EXAMPLE_SPEECH), SR)


@pytest.mark.parametrize("seconds,fps", [(0.3, 25.0), (5.0, 25.0), (5.0, 30.0), (3.0, 29.97)])
def test_generates_one_pose_per_video_frame(model, speech, seconds, fps):
    out = model.generate(speech[: int(seconds * SR)], fps)
    assert out.shape == (int(round(min(seconds, len(speech) / SR) * fps)), N_POSE) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert model.generate(speech[:SR], fps, n_frames=7).shape == (7, N_POSE)
    assert model.generate(np.zeros(0, np.float32), fps, n_frames=3).shape == (3, N_POSE)


def test_a_seed_picks_one_motion_and_repeats_it(model, speech):
    a = model.generate(speech, 25.0, seed=1)
    b = model.generate(speech.copy(), 25.0, seed=1)
    c = model.generate(speech, 25.0, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 0.1 * np.abs(a).mean(), "another seed, another motion"


def test_different_speech_gives_different_motion_for_the_same_seed(model, speech):
    n = min(len(speech), 3 * SR)
    a = model.generate(speech[:n], 25.0, seed=0)
    b = model.generate(speech[::-1][:n].copy(), 25.0, seed=0)  # the same voice, other words
    assert a.shape == b.shape
    assert np.abs(a - b).mean() > 0.2 * np.abs(a).mean()


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
    monkeypatch.setattr(audio2pose, "CHUNK_FRAMES", 64)
    chunked = model.generate_normalised(inputs, seed=3)
    assert np.abs(one_pass - chunked).max() < 1e-4


def test_speech_features_made_a_few_frames_at_a_time_equal_one_pass_over_the_whole_input(model, speech,
                                                                                          monkeypatch):
    """The log-mel, its normalisation, the 8 kHz copy and pitch track, the network's input rows and the speech
    condition are made in chunks overlapping by what each step reaches (memory bounded for any length): with tiny
    chunks they equal one pass over the whole input (the normalisation and the decimation written out whole here)."""
    from a2pcli import audio2pose, prosody

    audio = speech[: 3 * SR]  # shorter than one default chunk of every step: one pass
    logmel = features.log_mel(audio)
    level = features.frame_level_db(logmel)
    loud = level >= np.percentile(level, features.LEVEL_PERCENTILE) - features.SPEECH_RANGE_DB
    normalised = np.maximum((logmel - logmel[loud].mean(0)) / features.FEATURE_SCALE, features.FLOOR)
    decimated = np.convolve(audio, prosody._decimation_filter(), mode="same")[:: prosody.PITCH_DECIMATE]
    f0, voicing = prosody.pitch_track(audio)
    inputs = audio2pose.speech_inputs(audio)
    cond = model.condition(inputs)
    assert f0.max() > 0, "voiced speech"

    monkeypatch.setattr(features, "CHUNK_FRAMES", 7)
    monkeypatch.setattr(prosody, "PITCH_CHUNK", 3)
    monkeypatch.setattr(audio2pose, "ENCODE_FRAMES", 5)
    assert np.abs(features.log_mel(audio) - logmel).max() < 1e-4
    assert np.abs(features.normalise(logmel) - normalised).max() < 1e-5
    assert np.abs(prosody._decimate(audio) - decimated).max() < 1e-6
    f0_chunked, voicing_chunked = prosody.pitch_track(audio)
    assert np.abs(f0_chunked - f0).max() < 1e-3 and np.abs(voicing_chunked - voicing).max() < 1e-5
    rows = audio2pose.SpeechInputs(audio)
    pieces = np.concatenate([rows.rows(a, a + 11) for a in range(0, len(rows), 11)])
    assert np.abs(pieces[: len(inputs)] - inputs).max() < 1e-4
    assert (pieces[len(inputs) :] == audio2pose.SILENT_INPUT).all(), "silence past the end"
    assert float((model.condition(rows) - cond).abs().max()) < 1e-4


def test_bad_inputs(model):
    with pytest.raises(InputError):
        model.generate(np.zeros((2, 100), np.float32), 25.0)
    with pytest.raises(InputError):
        model.generate(np.zeros(100, np.float32), 0.0)
    with pytest.raises(InputError):
        model.generate(np.zeros(100, np.float32), 25.0, seed=-1)


def _copy_of_the_shipped_model(folder):
    shutil.copytree(load_model().path, folder, ignore=shutil.ignore_patterns("README.md"))
    return folder


def test_corrupt_or_missing_weights_name_the_file(tmp_path):
    folder = _copy_of_the_shipped_model(tmp_path / "a2p")
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


def test_pose_scale_and_still_apply_to_the_model(model, speech):
    from a2pcli.talk import TalkOptions

    n = int(len(speech) / SR * 25)
    head = model.generate(speech, 25.0, n, seed=0)
    full, _ = _target_euler(speech, TalkOptions(), head)
    half, _ = _target_euler(speech, TalkOptions(pose_scale=0.5), head)
    still, _ = _target_euler(speech, TalkOptions(still=True), head)
    assert np.allclose(half.std(0), 0.5 * full.std(0), rtol=0.05, atol=0.02)
    assert np.abs(still).max() < 1e-3


def test_audio2video_moves_the_head_more_than_the_rule_and_repeats_for_a_seed(speech):
    """The library pipeline's targets (what the renderer draws): the shipped model by default, the same head
    pose in every frame for the same seed, another for another seed, and more motion than `--head rule`."""
    from a2pcli.headpose import euler_from_matrix
    from a2pcli.pipeline.models import Models
    from a2pcli.pipeline.options import TalkJob
    from a2pcli.pipeline.talking import talk_motion
    from a2pcli.talk import TalkOptions

    portrait = media("sadtalker_happy.png", fallback=EXAMPLE_PORTRAIT)
    samples = speech[: 6 * SR]
    models = Models()

    def head(seed, **talk):
        _, tgt, _ = talk_motion(portrait, samples, TalkJob(seed=seed, talk=TalkOptions(**talk)), models=models)
        return euler_from_matrix(tgt.rotation), tgt.translation

    learned, shift = head(5)
    again, shift_again = head(5)
    other, _ = head(6)
    rule, rule_shift = head(5, head="rule")
    assert np.array_equal(learned, again) and np.array_equal(shift, shift_again)
    assert np.abs(learned - other).mean() > 0.3
    assert learned.std(0).sum() > 1.5 * rule.std(0).sum(), (learned.std(0), rule.std(0))
    assert np.abs(np.diff(learned, axis=0)).mean() > np.abs(np.diff(rule, axis=0)).mean()
    assert shift[:, 0].std() > rule_shift[:, 0].std(), "the model also moves the head sideways"


def test_head_option_is_checked_before_any_work(tmp_path):
    """A --head that is no model folder: exit 2 naming it; a corrupt model: exit 4 naming `a2p models verify`;
    nothing written either way."""
    from a2pcli.pipeline.options import TalkJob, check_talk_job
    from a2pcli.talk import TalkOptions

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    for bad in (tmp_path / "nope", not_a_model, EXAMPLE_SPEECH):
        with pytest.raises(InputError) as exc:
            check_talk_job(TalkJob(talk=TalkOptions(head=str(bad))))
        assert "--head" in exc.value.one_line() and str(bad) in exc.value.one_line()
    out = tmp_path / "x.mp4"
    proc = run_a2p("audio2video", EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, "--head", tmp_path / "nope", "-o", out)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
    corrupt = _copy_of_the_shipped_model(tmp_path / "corrupt")
    (corrupt / WEIGHTS_FILE).write_bytes(b"\0" * 100)
    proc = run_a2p("audio2video", EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, "--head", corrupt, "-o", out)
    assert proc.returncode == 4 and "a2p models verify" in proc.stderr and str(corrupt) in proc.stderr
    assert not out.exists()


# --- training ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two 2-s talking clips (with sound) cut from a video, as two 'speakers'."""
    src = media("sadtalker_WDA_KatieHill_000.mp4", fallback=driving_video)
    root = tmp_path_factory.mktemp("a2p-data") / "clips"
    for spk, start in (("spk_a", 0.0), ("spk_b", 2.0)):
        (root / spk).mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", str(start), "-t", "2", "-i", str(src), "-vf",
                        "scale=256:256", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                        str(root / spk / f"{spk}.mp4")], check=True)
    return root


@pytest.mark.slow
def test_tiny_preset_trains_checkpoints_resumes_and_exports(tiny_data, tmp_path):
    out = tmp_path / "model"
    poses = tmp_path / "poses"  # one clip's landmarks from `a2p extract-pose`, the other's found by the trainer
    poses.mkdir()
    run_a2p("extract-pose", tiny_data / "spk_a" / "spk_a.mp4", "-o", poses / "spk_a.pose", "-q", check=0)
    proc = run_a2p("train", "audio2pose", "--data", tiny_data, "--poses", poses, "-o", out, "--preset", "tiny",
                   "--device", "cpu", "--val-speakers", "spk_b", "--json", check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 2 and s["steps"] == 6
    assert s["data"]["train"]["speakers"] == 1 and s["data"]["val"]["speakers"] == 1
    assert "val_model_std_ratio" in s["validation"] and "val_rule_std_ratio" in s["validation"], proc.stderr
    assert "epoch 2/2" in proc.stderr and "onset r" in proc.stderr
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "dataset.npz").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    first = load_model(str(out))

    # resumed from the prepared dataset alone (what a GPU machine is given): the same clips, one more epoch
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    shutil.copy(out / "dataset.npz", prepared / "dataset.npz")
    proc = run_a2p("train", "audio2pose", "--data", prepared, "-o", out, "--preset", "tiny", "--device", "cpu",
                   "--resume", out, "--epochs", "3", "--json", check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 3 and s["steps"] == 9 and "resumed from" in proc.stderr
    model = load_model(str(out))
    assert model.config == first.config
    motion = model.generate(np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1, 25.0)
    assert motion.shape == (25, N_POSE) and np.isfinite(motion).all()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from a2pcli.train.audio2pose import TrainOptions, train

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "last.pt"
    bad.write_bytes(pickle.dumps({"meta": Payload()}))
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(InputError) as exc:
        train(TrainOptions(data=(data,), output=tmp_path / "out", preset="tiny", resume=bad, device="cpu"))
    assert str(bad) in exc.value.one_line() and not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_under_torchrun_train_it_and_write_once(tmp_path):
    """`torchrun -m a2pcli train audio2pose` with two CPU processes (gloo) on synthetic clips: each crops its own
    share of the stretches, rank 0 alone logs and exports."""
    from a2pcli.train.clips import data_cache_dir
    from a2pcli.train.synthetic import make_synthetic_data
    from tests.test_train_ddp import TINY, torchrun

    data = tmp_path / "clips"
    make_synthetic_data(data, data_cache_dir(), speakers=2, clips_per_speaker=2, seconds=3.0, max_clip_s=(2.0,))
    out = tmp_path / "model"
    proc = torchrun("train", "audio2pose", "--data", data, "-o", out, *TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 6
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert load_model(str(out)).generate(np.zeros(SR, np.float32), 25.0).shape == (25, N_POSE)


def test_pitch_accents_are_found_where_the_pitch_rises_above_its_surroundings():
    """The stress measure the evaluation correlates head speed with: a pitch rise in voiced speech is an
    accent at its time; flat pitch and unvoiced stretches are none."""
    from a2pcli.train.audio2pose.evaluate import accent_strength

    fps, seconds = 25.0, 4.0
    rows = np.zeros((int(seconds * 100), 3), np.float32)  # [loudness, pitch (octaves), voicing] at 100 Hz
    rows[:300, 2] = 0.9  # voiced for 3 s, unvoiced after
    rows[140:160, 1] = 0.5  # half an octave up at 1.4-1.6 s
    rows[320:340, 1] = 0.5  # the same rise while unvoiced: no pitch there
    acc = accent_strength(rows, fps, int(seconds * fps))
    assert acc.shape == (100,)
    assert np.isfinite(acc).all() and (acc >= 0).all()
    assert int(np.argmax(acc)) in range(35, 41)
    assert acc[:20].max() < 0.05 * acc.max()  # flat voiced pitch
    assert acc[78:].max() < 0.05 * acc.max()  # unvoiced
