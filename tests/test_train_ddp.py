"""Training in several processes through torchrun (real `torch.distributed.run`, gloo on the CPU): the
processes end with the same weights, each reads its own share of the data, the loss falls, rank 0 alone
writes, resume continues the step count, errors are shown once and any failure fails the run; one process
trains as before. The data is synthetic (a2pcli.train.synthetic): no media, no MediaPipe; tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from a2pcli.errors import EnvironmentProblem, InputError
from a2pcli.train import core

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--preset", "tiny", "--device", "cpu", "--val-speakers", "spk01", "--progress", "none")


def torchrun(*args, nproc: int = 2, module: bool = True) -> subprocess.CompletedProcess:
    """torchrun --standalone --nproc-per-node N -m a2pcli ARGS, as a user starts it (module=False: a script)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("A2P_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *(["-m", "a2pcli"] if module else []), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture
def clips(tmp_path):
    """Two synthetic speakers of two 3-s clips each, prepared into this test's data cache."""
    from a2pcli.train.clips import data_cache_dir
    from a2pcli.train.synthetic import make_synthetic_data

    root = tmp_path / "clips"
    make_synthetic_data(root, data_cache_dir(), speakers=2, clips_per_speaker=2, seconds=3.0, max_clip_s=(2.0,))
    return root


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / core.LOG_FILE).read_text().splitlines()]


# --- the core, with the toy trainer -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_end_with_the_same_weights_each_reading_its_own_share(tmp_path):
    out = tmp_path / "toy"
    proc = torchrun(ROOT / "tests" / "toy_trainer.py", out, 3, module=False)
    assert proc.returncode == 0, proc.stderr
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [30, 30]
    assert (ranks[0]["weight"], ranks[0]["bias"]) == (ranks[1]["weight"], ranks[1]["bias"]), "identical weights"
    assert abs(ranks[0]["bias"] - 1) < 0.3, "it learns y = 2x + 1"
    for epoch in ("1", "2", "3"):
        a, b = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert not set(a) & set(b) and sorted(a + b) == list(range(64)), "disjoint shares covering the data"
    assert ranks[0]["seen"]["1"] != ranks[0]["seen"]["2"], "a new split every epoch"
    log = _log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3], "one log row per epoch: rank 0 alone writes"
    assert log[-1]["train_loss"] < 0.5 * log[0]["train_loss"], "the loss falls"
    assert _files(out) == ["checkpoints", "checkpoints/last.pt", "config.json", "model.safetensors", "rank0.json",
                           "rank1.json", "train_log.jsonl"]


# --- a real trainer through the CLI: `torchrun -m a2pcli train audio2motion` ------------------------------------


@pytest.mark.slow
def test_torchrun_trains_audio2motion_writes_once_and_resumes(clips, tmp_path):
    from a2pcli.audio2motion import load_model

    out = tmp_path / "model"
    # --resume naming -o itself: a new run the first time, a continued one after (what --max-restarts needs)
    args = ["train", "audio2motion", "--data", clips, "-o", out, *TINY, "--json", "--resume", out]
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" not in proc.stderr
    summary = json.loads(proc.stdout)  # one summary: rank 0's
    assert summary["steps"] == 6 and summary["epochs"] == 2
    assert proc.stderr.count("epoch 1/2") == 1 and proc.stderr.count("device: cpu") == 1, proc.stderr
    assert "x 2 processes" in proc.stderr
    assert _files(out) == ["checkpoints", "checkpoints/last.pt", "config.json", "model.safetensors",
                           "train_log.jsonl"]
    log = _log(out)
    assert [r["step"] for r in log] == [3, 6] and log[1]["train_loss"] < log[0]["train_loss"]
    load_model(str(out))

    proc = torchrun(*args, "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 9 and proc.stderr.count("resumed from") == 1
    assert [r["step"] for r in _log(out)] == [3, 6, 9]
    assert core.load_checkpoint(out / "checkpoints" / "last.pt", "audio2motion").state.step == 9


@pytest.mark.slow
def test_one_process_under_torchrun_trains_the_same_model_as_a_plain_run(clips, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from tests.conftest import run_a2p

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun() runs it: the same float summation order
    plain, launched = tmp_path / "plain", tmp_path / "torchrun"
    run_a2p("train", "audio2motion", "--data", clips, "-o", plain, *TINY, check=0)
    proc = torchrun("train", "audio2motion", "--data", clips, "-o", launched, *TINY, nproc=1)
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(plain / "model.safetensors"), load_file(launched / "model.safetensors")
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert [r["train_loss"] for r in _log(plain)] == [r["train_loss"] for r in _log(launched)]


@pytest.mark.slow
@pytest.mark.corpus
def test_two_processes_prepare_each_real_clip_once_and_train(tmp_path):
    from tests.conftest import ffmpeg_exe, media

    src = media("sadtalker_WDA_KatieHill_000.mp4")
    data = tmp_path / "clips"
    for spk, starts in (("spk00", (0.0, 2.0)), ("spk01", (4.0, 6.0))):
        (data / spk).mkdir(parents=True)
        for start in starts:
            subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", str(start), "-t", "1.5", "-i", str(src), "-vf",
                            "scale=256:256", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                            str(data / spk / f"{spk}_{start:g}.mp4")], check=True)
    made = tmp_path / "made.txt"
    driver = tmp_path / "count_preparations.py"  # `a2p` with each clip's preparation noted in `made`
    driver.write_text(f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from a2pcli.train import clips
real = clips._prepare_arrays
def counted(src, max_clip_s):
    with open({str(made)!r}, "a") as f:
        f.write(os.environ["RANK"] + " " + src.name + "\\n")
    return real(src, max_clip_s)
clips._prepare_arrays = counted
from a2pcli.cli.app import main
main(sys.argv[1:])
""")
    out = tmp_path / "model"
    proc = torchrun(driver, "train", "audio2motion", "--data", data, "-o", out, *TINY, module=False)
    assert proc.returncode == 0, proc.stderr
    names = sorted(line.split()[1] for line in made.read_text().splitlines())
    assert names == sorted(f"clips/{p.parent.name}/{p.name}" for p in data.rglob("*.mp4")), "each clip once"
    assert (out / "model.safetensors").is_file()


def test_bad_input_under_torchrun_is_reported_once_and_fails_the_run(tmp_path):
    out = tmp_path / "model"
    proc = torchrun("train", "audio2motion", "--data", tmp_path / "missing", "-o", out, *TINY)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing" in errors[0] and "not found" in errors[0], proc.stderr
    assert not out.exists()


# --- the pieces --------------------------------------------------------------------------------------------------


def test_torchrun_variables_are_read_and_checked(monkeypatch):
    assert core.launch_from_env({}) == core.Launch(0, 0, 1)
    assert core.launch_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == core.Launch(3, 1, 4)
    for bad in ({"WORLD_SIZE": "two"}, {"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(InputError):
            core.launch_from_env(bad)
    monkeypatch.setenv("WORLD_SIZE", "1")
    rt = core.start_runtime("cpu", None)
    assert (rt.rank, rt.world_size, rt.is_main, rt.distributed, rt.device) == (0, 1, True, False, "cpu")
    assert rt.per_process(32) == 32 and rt.seed(3, "epoch", 1) == core.derive_seed(3, "epoch", 1)


def test_under_torchrun_a_numbered_gpu_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(InputError, match="LOCAL_RANK"):
        core.start_runtime("cuda:1", None)


def test_each_process_gets_a_share_of_the_data_and_of_the_batch():
    weights = np.random.default_rng(0).uniform(0.5, 2.0, 50)
    one = core.Runtime("cpu", "CPU")
    assert one.shard(weights, 9) == list(range(50)), "one process: every item, in order"
    shares = [core.Runtime("cpu", "CPU", r, 3).shard(weights, 9) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(50)), "disjoint and complete"
    loads = [weights[s].sum() for s in shares]
    assert max(loads) - min(loads) <= weights.max(), "about the same weight each"
    assert shares[0] != core.Runtime("cpu", "CPU", 0, 3).shard(weights, 10), "another split for another epoch"
    assert [core.Runtime("cpu", "CPU", r, 4).shard([1.0, 1.0], 3) for r in range(4)] in (
        [[0], [1], [0], [1]], [[1], [0], [1], [0]]), "fewer items than processes: shared"
    assert [core.Runtime("cpu", "CPU", r, 3).per_process(8) for r in range(3)] == [3, 3, 2]


def test_a_batch_smaller_than_the_processes_is_refused():
    from a2pcli.progress import Reporter

    reporter = Reporter()
    with pytest.raises(InputError) as exc:
        core.check_batch_split(core.Runtime("cpu", "CPU", 0, 4), 3, reporter)
    assert "--batch-size" in exc.value.one_line()
    core.check_batch_split(core.Runtime("cpu", "CPU", 0, 4), 6, reporter)
    assert reporter.warnings and "unevenly" in reporter.warnings[0]


@pytest.mark.parametrize("error,shown", [(EnvironmentProblem("out of GPU memory", subject="cuda:1"), True),
                                         (InputError("data folder not found", subject="clips"), False)])
def test_other_ranks_fail_with_their_exit_code_and_show_only_their_own_failures(monkeypatch, capsys, error, shown):
    import click

    import a2pcli.cli.app  # noqa: F401 - the application first: it registers the command modules
    from a2pcli.cli.cmd_train import run_trainer
    from a2pcli.cli.options import ProgressMode

    def train(opts, reporter):
        raise error

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(click.exceptions.Exit) as exc:
        run_trainer("toy", train, None, ProgressMode.auto, False, True, str)
    assert exc.value.exit_code == error.exit_code
    err = capsys.readouterr()
    assert err.out == "" and (err.err == f"error: rank 1: {error.one_line()}\n" if shown else err.err == "")


def test_a_cache_entry_wanted_by_two_processes_at_once_is_made_once(tmp_path):
    script = """
import sys, time
from pathlib import Path
import numpy as np
from a2pcli.train.clips import cached_entry

def make():
    with open(sys.argv[2], "a") as f:
        f.write("made\\n")
    time.sleep(3.0)
    return {"x": np.arange(5)}

print(cached_entry(Path(sys.argv[1]), make)["x"].sum())
"""
    entry, log = tmp_path / "cache" / "e.npz", tmp_path / "made.txt"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(entry), str(log)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and [o.strip() for o in outs] == ["10", "10"]
    assert log.read_text() == "made\n", "one process made it, the other read it"


def test_train_help_gives_the_torchrun_command():
    from tests.conftest import run_a2p

    out = run_a2p("train", "audio2motion", "--help", check=0).stdout
    assert "torchrun --standalone --nproc-per-node 4 -m a2pcli train audio2motion" in out
