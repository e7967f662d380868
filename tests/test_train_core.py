"""What every trainer shares (a2pcli.train.core): checkpoints are untrusted input and never run code, a failed
run leaves no folder behind, the loop logs, checkpoints and resumes to the same weights, and the schedule,
weight average and runtime behave as documented. Small and fast: no shared media, tiny networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from a2pcli.errors import InputError
from a2pcli.train import core
from a2pcli.train.core import LoopSettings, RunState, TrainOptions
from tests.conftest import run_a2p


class _CreatesFile:
    """A pickle payload: unpickling it opens (creates) `path` for writing."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"format": core.CHECKPOINT_FORMAT, "model": _CreatesFile(marker)}, path)
    return path


@pytest.fixture
def payload(tmp_path):
    """(crafted checkpoint, the file its unpickling would create); checked to be a working payload."""
    import torch

    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(evil, weights_only=False)  # what the old loader did: the payload runs
    assert marker.exists(), "the payload is real"
    marker.unlink()
    return evil, marker


@pytest.fixture
def data_dir(tmp_path):
    """A data folder with one (undecodable) video per speaker: enough to get past the folder checks."""
    root = tmp_path / "clips"
    for spk in ("a", "b"):
        (root / spk).mkdir(parents=True)
        (root / spk / f"{spk}.mp4").write_bytes(b"not a video")
    return root


def test_resume_from_a_crafted_checkpoint_is_refused_without_running_it(payload, data_dir, tmp_path):
    evil, marker = payload
    out = tmp_path / "model"
    proc = run_a2p("train", "audio2motion", "--data", data_dir, "-o", out, "--preset", "tiny", "--device", "cpu",
                   "--resume", evil)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "no code from the checkpoint ran"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(evil) in lines[0] and "without --resume" in lines[0], proc.stderr
    assert not out.exists(), "a run that failed before writing anything leaves no folder"


def test_a_crafted_last_checkpoint_in_the_model_folder_is_refused(payload, data_dir, tmp_path):
    evil, marker = payload
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    evil.rename(out / "checkpoints" / "last.pt")
    proc = run_a2p("train", "audio2motion", "--data", data_dir, "-o", out, "--preset", "tiny", "--device", "cpu",
                   "--resume", out)
    assert proc.returncode == 2 and "last.pt" in proc.stderr, proc.stderr
    assert not marker.exists()
    assert (out / "checkpoints" / "last.pt").exists(), "an existing folder and its files are left alone"


def test_data_is_checked_before_any_checkpoint_is_read(payload, tmp_path):
    evil, marker = payload
    proc = run_a2p("train", "audio2motion", "--data", tmp_path / "missing", "-o", tmp_path / "m", "--resume", evil)
    assert proc.returncode == 2 and "missing" in proc.stderr and "not found" in proc.stderr, proc.stderr
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_an_old_format_checkpoint_is_refused_with_a_one_line_reason(data_dir, tmp_path):
    import torch

    old = tmp_path / "old.pt"  # the layout of earlier versions: a pickled dict with numpy arrays in it
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1, "step": 3, "history": [],
                "targets": {"basis": np.zeros((2, 3, 3), np.float32)}}, old)
    with pytest.raises(InputError) as exc:
        core.load_checkpoint(old, "audio2motion")
    msg = exc.value.one_line()
    assert str(old) in msg and "Start again without --resume" in msg and "\n" not in msg


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None])
def test_damaged_or_foreign_checkpoints_are_refused(tmp_path, content):
    import torch

    path = tmp_path / "c.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)  # a plain state dict, not a training checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        core.load_checkpoint(path, "audio2motion")
    assert str(path) in exc.value.one_line()


def test_a_run_that_fails_leaves_no_new_folder(data_dir, tmp_path):
    out = tmp_path / "new" / "model"
    proc = run_a2p("train", "audio2motion", "--data", data_dir, "-o", out, "--preset", "tiny", "--device", "cpu")
    assert proc.returncode == 2 and "usable clip" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists()


def test_an_existing_output_folder_is_kept_when_a_run_fails(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError), core.output_folder(out):
        raise RuntimeError("boom")
    assert (out / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("change,flag", [({"lr": float("nan")}, "--lr"), ({"lr": 0.0}, "--lr"),
                                         ({"epochs": 0}, "--epochs"), ({"batch_size": -1}, "--batch-size"),
                                         ({"val_speakers": ("",)}, "--val-speakers"), ({"preset": "huge"}, "--preset"),
                                         ({"seed": -1}, "--seed")])
def test_bad_options_are_named(tmp_path, change, flag):
    opts = TrainOptions(data=(tmp_path,), output=tmp_path / "m", **change)
    with pytest.raises(InputError) as exc:
        core.check_options(opts, ["tiny", "default"])
    assert flag in exc.value.one_line()


def test_resume_naming_the_model_folder_itself_starts_a_new_run_until_it_holds_a_checkpoint(tmp_path):
    out = tmp_path / "model"
    core.check_options(TrainOptions(data=(tmp_path,), output=out, resume=out), ["default"])
    assert core.find_checkpoint(out, out) is None
    with pytest.raises(InputError, match="checkpoint not found"):
        core.check_options(TrainOptions(data=(tmp_path,), output=out, resume=tmp_path / "other"), ["default"])
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    assert core.find_checkpoint(out, out) == out / "checkpoints" / "last.pt"


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        core.check_output_folder(tmp_path / "f")
    core.check_output_folder(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists(), "the check creates nothing"


def test_learning_rate_warms_up_then_decays_to_the_floor():
    lrs = [core.warmup_cosine(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert core.warmup_cosine(100, 100, 1e-3, 10) == pytest.approx(core.LR_FLOOR * 1e-3)


def test_weight_average_follows_the_network():
    import torch

    net = torch.nn.Linear(2, 1)
    assert core.make_ema(net, 0.0) is net
    ema = core.make_ema(net, 0.9)
    with torch.no_grad():
        net.weight.add_(1.0)
    before = ema.weight.clone()
    core.update_ema(ema, net, 0.9, step=1000)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * net.weight)
    assert not ema.weight.requires_grad


# --- the loop, with a toy trainer: the protocol a trainer implements ------------------------------------------


class _Line:
    """Fit y = 2x + 1 from noisy samples; every draw from the rng fit() gives."""

    name = "toy"

    def batches(self, epoch, rng):
        while True:
            x = rng.uniform(-1, 1, (8, 1)).astype(np.float32)
            yield x, (2 * x + 1 + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)

    def loss(self, net, batch):
        import torch

        x, y = (torch.from_numpy(a) for a in batch)
        err = ((net(x) - y) ** 2).mean()
        return err, {"mse": float(err.detach())}

    def validate(self, ema):
        import torch

        with torch.no_grad():
            return {"val_bias": round(float(ema.bias), 4)}

    def describe_epoch(self, row, epochs):
        return f"epoch {row['epoch']}/{epochs}"

    def checkpoint_extra(self):
        return {"note": "toy", "shape": (1, 1)}, {"extra": np.arange(3, dtype=np.float32)}


def _toy_run(out: Path, epochs: int, resume: bool = False, stop_after: int | None = None):
    import torch

    from a2pcli.progress import Reporter

    loop = LoopSettings(epochs=epochs, steps_per_epoch=5, lr=0.05, warmup_steps=2, weight_decay=0.0,
                        grad_clip=1.0, ema_decay=0.5)

    def sink(ev):
        if stop_after and ev["event"] == "info" and ev["message"] == f"epoch {stop_after}/{epochs}":
            raise KeyboardInterrupt

    with core.output_folder(out):
        core.start_log(out, resumed=resume)
        core.seed_all(0)
        net = torch.nn.Linear(1, 1)
        ema = core.make_ema(net, loop.ema_decay)
        optim = core.make_optimizer(net, loop)
        state = RunState()
        if resume:
            ckpt = core.load_checkpoint(core.find_checkpoint(out), "toy")
            assert ckpt.meta["note"] == "toy" and ckpt.tensors["extra"].tolist() == [0, 1, 2]
            state = core.restore(ckpt, net, ema, optim)
        runtime = core.Runtime("cpu", "CPU")
        core.fit(_Line(), net, ema, optim, state, loop, core.Run(out, runtime, seed=7), Reporter(sink))
    return net, state


def test_the_loop_logs_checkpoints_and_resumes_to_the_same_weights(tmp_path):
    import torch

    net_a, state_a = _toy_run(tmp_path / "a", epochs=3)
    assert state_a.step == 15 and abs(float(net_a.bias.detach()) - 1) < 0.3, "it learns"
    log = [json.loads(line) for line in (tmp_path / "a" / core.LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"lr", "seconds", "train_loss", "train_mse", "val_bias"} <= set(log[0])
    torch.load(tmp_path / "a" / core.CHECKPOINT_DIR / core.LAST_CHECKPOINT, weights_only=True)

    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b", epochs=3, stop_after=1)
    assert (tmp_path / "b" / core.CHECKPOINT_DIR / core.LAST_CHECKPOINT).exists(), "kept: it can be resumed"
    net_b, state_b = _toy_run(tmp_path / "b", epochs=3, resume=True)
    assert state_b.step == 15 and len(state_b.history) == 3
    assert torch.equal(net_a.weight, net_b.weight) and torch.equal(net_a.bias, net_b.bias)


def test_restore_refuses_a_checkpoint_of_another_shape(tmp_path):
    import torch

    net = torch.nn.Linear(2, 2)
    optim = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    optim.step()
    core.save_checkpoint(tmp_path, "toy", net, net, optim, RunState(1, 1, []), {}, {})
    ckpt = core.load_checkpoint(tmp_path / core.CHECKPOINT_DIR / core.LAST_CHECKPOINT, "toy")
    other = torch.nn.Linear(3, 2)
    with pytest.raises(InputError, match="does not fit"):
        core.restore(ckpt, other, other, torch.optim.AdamW(other.parameters()))
    with pytest.raises(InputError, match="not 'audio2motion'"):
        core.load_checkpoint(ckpt.path, "audio2motion")



def test_restore_refuses_optimizer_settings_that_are_not_numbers(tmp_path):
    import torch

    net = torch.nn.Linear(2, 2)
    optim = torch.optim.AdamW(net.parameters())
    core.save_checkpoint(tmp_path, "toy", net, net, optim, RunState(), {}, {})
    ckpt = core.load_checkpoint(tmp_path / core.CHECKPOINT_DIR / core.LAST_CHECKPOINT, "toy")
    ckpt.optimizer["param_groups"][0]["betas"] = ("0.9", 0.999)
    with pytest.raises(InputError, match="betas"):
        core.restore(ckpt, net, net, torch.optim.AdamW(net.parameters()))


def test_exported_model_files_hold_the_tensors_and_the_config(tmp_path):
    import torch
    from safetensors.torch import load_file

    net = torch.nn.Linear(3, 2)
    core.write_model_files(tmp_path / "m", {"format": "toy", "model": {"in": 3, "out": 2}}, net.state_dict(),
                           {"format": "toy"})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"] == {"in": 3, "out": 2}
    loaded = load_file(tmp_path / "m" / "model.safetensors")
    assert torch.equal(loaded["weight"], net.weight.detach()) and set(loaded) == {"weight", "bias"}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
