"""The mouth model: the shipped one paints the mouth of embedded renders (and nothing else), a missing or
corrupt model stops a render with a clear error, silence closes a portrait's mouth that shows its teeth, and
the tiny training preset runs the whole loop (prepare, train, checkpoint, resume, export, load): on synthetic
samples without media, and from real talking clips when ../shared is there."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from a2pcli import facemesh as fm
from a2pcli.errors import ModelError
from a2pcli.mouthnet import CONFIG_FILE, WEIGHTS_FILE, load_model
from tests.conftest import EXAMPLE_PORTRAIT, SHARED, ffmpeg_exe, media, run_a2p
from tests.test_audio2video import mouth_series, run_ok, speech_wav  # noqa: F401  (fixture)


def _load(path: Path, size: int = 256):
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait

    return load_portrait(path, PortraitOptions(crop=True, size=size))


def _opening_targets(face, opening: float, n: int = 3):
    """n frames of the portrait's own pose, the lips parting linearly up to `opening` face units (the jaw
    and the lower lip move down)."""
    from a2pcli.headpose import apply_pose, load_reference
    from a2pcli.retarget import FaceTargets

    ref = load_reference().mean
    lower = ref[:, 1] > ref[fm.LIPS_INNER_LOWER, 1].min() - 0.01  # the lower lip and what lies below it
    canon = np.repeat(face.canon[None], n, 0)
    for i in range(n):
        canon[i, lower, 1] += opening * i / max(n - 1, 1) * np.clip((ref[lower, 1] - 0.1) / 0.2, 0.3, 1.0)
    rot = np.repeat(face.rotation[None], n, 0)
    trans = np.repeat(face.translation[None], n, 0)
    scale = np.full(n, face.scale, np.float32)
    return FaceTargets(apply_pose(canon, rot, trans, scale), rot, trans, scale)


def test_a_render_paints_the_mouth_with_the_shipped_model_and_nothing_else():
    """Where the lips part, the shipped model changes the mouth (the warp alone would stretch the lips into a
    pink band); every pixel away from the mouth is the warp's."""
    from a2pcli.render import WarpRenderer

    p = _load(media("sadtalker_happy.png", EXAMPLE_PORTRAIT))
    tgt = _opening_targets(p.face, 0.15)
    model = load_model()
    assert model.path is not None and model.path.name == "mouth"
    renderer = WarpRenderer(p.image, p.face, tgt, mouth=model)
    painted = renderer.render(tgt)
    warped = WarpRenderer(p.image, p.face, tgt).render(tgt)
    lm = tgt.landmarks[-1]
    box = np.zeros(p.image.shape[:2], bool)
    x0, y0 = (lm[fm.LIPS, :2].min(0) - 0.15 * p.face.scale).astype(int)
    x1, y1 = (lm[fm.LIPS, :2].max(0) + 0.15 * p.face.scale).astype(int)
    box[y0:y1, x0:x1] = True
    diff = np.abs(painted.astype(int) - warped.astype(int)).max(-1)
    closed = not renderer.open_portrait  # the example portrait (without ../shared) smiles with its teeth
    if closed:  # (a portrait that shows its teeth has them painted over, even at rest)
        assert (diff[0] == 0).all(), "a closed mouth is left to the warp"
    assert (diff[-1][~box] == 0).all(), "the model painted outside the mouth"
    inner = np.concatenate([lm[fm.LIPS_INNER_UPPER, :2], lm[fm.LIPS_INNER_LOWER[::-1], :2]])
    import cv2

    mask = np.zeros(p.image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 1)
    assert diff[-1][mask > 0].mean() > 10, "the open mouth was not painted"
    if not closed:  # its own teeth fill the opening: no darker cavity to expect
        return
    luma = painted[-1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    lips = np.zeros_like(mask)
    cv2.fillPoly(lips, [np.round(np.concatenate([lm[fm.LIPS_OUTER_UPPER, :2], lm[fm.LIPS_OUTER_LOWER[::-1], :2]]))
                        .astype(np.int32)], 1)
    assert luma[mask > 0].mean() < luma[(lips > 0) & (mask == 0)].mean(), "the open mouth is not darker than the lips"


def _copy_model(tmp_path) -> Path:
    folder = tmp_path / "mouth"
    shutil.copytree(load_model().path, folder, ignore=shutil.ignore_patterns("README.md"))
    return folder


def test_corrupt_or_missing_mouth_model_folder(tmp_path):
    folder = _copy_model(tmp_path)
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as exc:
        load_model(str(folder))
    msg = exc.value.one_line()
    assert exc.value.exit_code == 4 and str(folder / WEIGHTS_FILE) in msg and "a2p models verify" in msg
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError) as exc:
        load_model(str(folder))
    assert WEIGHTS_FILE in exc.value.one_line() and "a2p models verify" in exc.value.one_line()
    (folder / CONFIG_FILE).write_text("{")
    with pytest.raises(ModelError) as exc:
        load_model(str(folder))
    assert CONFIG_FILE in exc.value.one_line() and "a2p models verify" in exc.value.one_line()


def test_corrupt_shipped_mouth_model_is_caught_by_its_hash(tmp_path, monkeypatch):
    from a2pcli import registry
    from a2pcli.paths import shipped_models_dir

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(shipped_models_dir() / "registry.json", models / "registry.json")
    shutil.copytree(shipped_models_dir() / "mouth", models / "mouth")
    weights = models / "mouth" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(registry, "shipped_models_dir", lambda: models)
    with pytest.raises(ModelError) as exc:
        load_model()
    msg = exc.value.one_line()
    assert str(weights) in msg and "a2p models verify" in msg


def test_a_render_with_a_corrupt_mouth_model_exits_4_naming_models_verify(tmp_path):
    """As a user sees it: a one-line error naming the file and `a2p models verify`, exit code 4, no output."""
    folder = _copy_model(tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    (folder / WEIGHTS_FILE).write_bytes(bytes(data[:-200]))
    from a2pcli.motion import from_euler, save_pose

    motion = from_euler(np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32), 25.0)
    pose = tmp_path / "still.pose"
    save_pose(motion, pose)
    out = tmp_path / "out.mp4"
    proc = run_a2p("pose2vid", media("sadtalker_happy.png", EXAMPLE_PORTRAIT), pose, "-o", out, "--crop", "--size",
                   "128", "--mouth-model", folder, "--device", "cpu", "--progress", "none")
    assert proc.returncode == 4, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a2p models verify" in errors[0] and WEIGHTS_FILE in errors[0], proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_silence_closes_a_portrait_mouth_that_shows_its_teeth(capsys, tmp_path, speech_wav):  # noqa: F811
    """A smiling portrait showing its teeth: in the silence after the speech the lips close over them (as
    MediaPipe reads the rendered video), instead of keeping the portrait's open mouth."""
    from a2pcli.landmarks import mouth_opening

    portrait = SHARED / "corpus" / "portraits" / "ali-vilab__dreamtalk__menglu2.png"
    if not portrait.exists():
        pytest.skip(f"corpus portrait {portrait} not present (set A2P_SHARED to the shared folder)")
    out = tmp_path / "smile_talk.mp4"
    run_ok(capsys, portrait, speech_wav, "--crop", "--size", "256", "-o", out)
    m = mouth_series(out)
    own = float(mouth_opening(_load(portrait).face.landmarks))
    speaking, silent = m[: int(2 * 25)], m[int(2.6 * 25):]
    assert own > 0.08  # the portrait's mouth is open: its teeth show
    assert silent.max() < 0.35 * own, (silent.max(), own)
    assert speaking.max() > silent.max() + 0.05


# --- training ------------------------------------------------------------------------------------------


@pytest.fixture
def synthetic_clips(tmp_path):
    """Two speakers' stand-in clips with their mouth samples in the data cache (no media needed)."""
    from a2pcli.train.clips import data_cache_dir
    from a2pcli.train.mouth.synthetic import make_synthetic_samples
    from a2pcli.train.synthetic import make_synthetic_data

    root = tmp_path / "clips"
    sources = make_synthetic_data(root, data_cache_dir(), speakers=2, clips_per_speaker=1, seconds=1.0)
    make_synthetic_samples(sources, data_cache_dir())
    return root


def test_tiny_mouth_preset_trains_checkpoints_resumes_and_loads(synthetic_clips, tmp_path):
    import torch

    from a2pcli.render import WarpRenderer

    out = tmp_path / "model"
    args = ["train", "mouth", "--data", synthetic_clips, "-o", out, "--preset", "tiny", "--device", "cpu",
            "--val-speakers", "spk01", "--json"]
    proc = run_a2p(*args, check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 2 and s["steps"] == 6
    assert s["data"]["train"]["speakers"] == 1 and s["data"]["val"]["speakers"] == 1
    assert "epoch 2/2" in proc.stderr and s["validation"]["val_samples"] > 0
    ckpt = out / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["train_adv"] != 0  # the adversarial term has started

    proc = run_a2p(*args, "--resume", out, "--epochs", "3", check=0)
    s = json.loads(proc.stdout)
    assert s["epochs"] == 3 and s["steps"] == 9 and "resumed from" in proc.stderr
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickled objects in a checkpoint
    assert state["trainer"] == "mouth" and {"model", "ema", "optimizer", "tensors"} <= set(state)
    assert any(k.startswith("disc.") for k in state["tensors"]), "the discriminator is checkpointed"
    assert json.loads(state["meta"])["step"] == 9

    model = load_model(str(out))
    assert model.config.size == 32
    p = _load(media("sadtalker_happy.png", EXAMPLE_PORTRAIT), 128)
    tgt = _opening_targets(p.face, 0.15, 2)
    frames = WarpRenderer(p.image, p.face, tgt, mouth=model).render(tgt)
    assert frames.shape == (2, 128, 128, 3)


def test_an_interrupted_mouth_run_resumes_to_the_same_weights(synthetic_clips, tmp_path):
    """Three epochs in one go, and three interrupted after the first and resumed, give the same weights (the
    discriminator and its optimiser are resumed too)."""
    from safetensors.torch import load_file

    from a2pcli.progress import Reporter
    from a2pcli.train.core import TrainOptions
    from a2pcli.train.mouth import train

    def stop_after_first_epoch(ev):
        if ev["event"] == "info" and ev["message"].startswith("epoch 1/3"):
            raise KeyboardInterrupt

    def run(out, reporter, resume=None):
        return train(TrainOptions(data=(synthetic_clips,), output=out, preset="tiny", epochs=3,
                                  val_speakers=("spk01",), resume=resume, device="cpu"), reporter)

    run(tmp_path / "once", Reporter())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "twice", Reporter(stop_after_first_epoch))
    assert not (tmp_path / "twice" / WEIGHTS_FILE).exists()
    run(tmp_path / "twice", Reporter(), resume=tmp_path / "twice")
    a, b = (load_file(str(tmp_path / d / WEIGHTS_FILE)) for d in ("once", "twice"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_resume_needs_a_mouth_checkpoint(synthetic_clips, tmp_path):
    bogus = tmp_path / "last.pt"
    bogus.write_bytes(b"not a checkpoint")
    proc = run_a2p("train", "mouth", "--data", synthetic_clips, "-o", tmp_path / "m", "--preset", "tiny",
                   "--device", "cpu", "--resume", bogus)
    assert proc.returncode == 2 and "checkpoint" in proc.stderr and not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory):
    """Two 1-s talking clips cut from a shared video, as two 'speakers'."""
    src = media("sadtalker_WDA_KatieHill_000.mp4")
    root = tmp_path_factory.mktemp("mouth-data") / "clips"
    for spk, start in (("spk_a", 0.0), ("spk_b", 3.0)):
        (root / spk).mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", str(start), "-t", "1", "-i", str(src), "-vf",
                        "scale=192:192", "-c:v", "libx264", "-preset", "ultrafast", "-an",
                        str(root / spk / f"{spk}.mp4")], check=True)
    return root


@pytest.mark.slow
def test_real_clips_are_prepared_once_into_the_shared_cache_and_train(real_clips, tmp_path):
    """From videos: the renderer's own warp against the real frames, cached; a second run reads the cache."""
    from a2pcli.progress import Reporter
    from a2pcli.train.clips import data_cache_dir
    from a2pcli.train.core import TrainOptions
    from a2pcli.train.mouth import prepare_data, train

    opts = TrainOptions(data=(real_clips,), output=tmp_path / "model", preset="tiny", val_speakers=("spk_b",),
                        device="cpu")
    found = prepare_data(opts, Reporter())
    assert found["clips"] == 2 and found["samples"] > 0
    entries = set(data_cache_dir().glob("*.npz"))
    s = train(opts, Reporter())
    assert s["steps"] == 6 and set(data_cache_dir().glob("*.npz")) == entries  # nothing prepared again
    assert load_model(str(tmp_path / "model")).config.size == 32


@pytest.mark.slow
def test_torchrun_trains_the_mouth_model_in_two_processes_and_writes_once(synthetic_clips, tmp_path):
    """Two gloo processes on the CPU: each its share of the clips, the network's and the discriminator's
    gradients averaged (the core checks that the processes keep the same weights), rank 0 alone writes."""
    from tests.test_train_ddp import TINY, torchrun

    out = tmp_path / "model"
    proc = torchrun("train", "mouth", "--data", synthetic_clips, "-o", out, *TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["steps"] == 6 and "x 2 processes" in proc.stderr
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["train_disc"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", CONFIG_FILE, WEIGHTS_FILE, "train_log.jsonl"]
    assert load_model(str(out)).config.size == 32
