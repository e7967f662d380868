"""`a2p train all`: the data prepared once, every component trained into its own folder (tiny presets on the
CPU), a component that fails reported while the others finish, a non-zero exit then, components on their own
"GPUs" at the same time, and --gpus without a GPU as a one-line error. Synthetic clips: no media needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from a2pcli.progress import Reporter
from a2pcli.train import suite
from a2pcli.train.components import COMPONENTS, Component
from tests.conftest import run_a2p

TOY = Component("tests.toy_trainer:train", ("tiny", "default"))


@pytest.fixture
def clips(tmp_path):
    from a2pcli.train.clips import data_cache_dir
    from a2pcli.train.mouth.synthetic import make_synthetic_samples
    from a2pcli.train.synthetic import make_synthetic_data

    root = tmp_path / "clips"
    sources = make_synthetic_data(root, data_cache_dir(), speakers=2, clips_per_speaker=2, seconds=3.0,
                                  max_clip_s=(2.0,))
    make_synthetic_samples(sources, data_cache_dir())  # the mouth model's samples of the same stand-in clips
    return root


@pytest.fixture
def unusable(tmp_path):
    """A data folder whose videos cannot be read: no component that needs clips can use it."""
    root = tmp_path / "broken"
    for spk in ("a", "b"):
        (root / spk).mkdir(parents=True)
        (root / spk / f"{spk}.mp4").write_bytes(b"not a video")
    return root


@pytest.mark.slow
def test_train_all_trains_every_component_with_the_tiny_presets(clips, tmp_path):
    from a2pcli.audio2motion import load_model
    from a2pcli.mouthnet import load_model as load_mouth_model

    models = tmp_path / "models"
    proc = run_a2p("train", "all", "--data", clips, "-o", models, "--preset", "tiny", "--device", "cpu",
                   "--val-speakers", "spk01", "--json", "--progress", "json", check=0)
    s = json.loads(proc.stdout)
    assert s["failed"] == [] and s["trained"] == list(COMPONENTS)
    row = s["components"]["audio2motion"]
    assert row["status"] == "ok" and row["summary"]["steps"] == 6 and set(row["seconds"]) == {"prepare", "train"}
    load_model(str(models / "audio2motion"))
    row = s["components"]["mouth"]
    assert row["status"] == "ok" and row["summary"]["steps"] == 6 and row["data"]["clips"] == 4
    load_mouth_model(str(models / "mouth"))
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    stages = {e.get("stage") for e in events if e["event"] == "progress"}
    assert {"audio2motion: prepare data (landmarks + features, cached)", "audio2motion: train"} <= stages


@pytest.mark.slow
def test_a_component_that_fails_is_reported_and_the_others_still_train(unusable, tmp_path):
    models = tmp_path / "models"
    reporter = Reporter()
    opts = suite.AllOptions(data=(unusable,), output=models, preset="tiny", device="cpu")
    s = suite.train_all(opts, reporter, components={"audio2motion": COMPONENTS["audio2motion"], "line": TOY})
    assert s["failed"] == ["audio2motion"] and s["trained"] == ["line"]
    bad = s["components"]["audio2motion"]
    assert bad["stage"] == "prepare" and "usable clip" in bad["error"] and bad["exit_code"] == 2
    assert any(w.startswith("audio2motion failed") for w in reporter.warnings)
    assert (models / "line" / "model.safetensors").is_file() and not (models / "audio2motion").exists()


def test_when_every_component_fails_the_exit_code_says_so_and_no_folder_is_left(unusable, tmp_path):
    models = tmp_path / "new" / "models"
    proc = run_a2p("train", "all", "--data", unusable, "-o", models, "--preset", "tiny", "--device", "cpu", "--json")
    assert proc.returncode == 2, proc.stderr
    s = json.loads(proc.stdout)
    assert s["failed"] == list(COMPONENTS) and s["components"]["audio2motion"]["status"] == "failed"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(COMPONENTS) and all("usable clip" in e for e in errors)
    assert errors[0].startswith("error: audio2motion: ")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_with_several_gpus_each_component_trains_at_the_same_time_on_its_own(tmp_path):
    """Two slots as --gpus 0,1 makes them (the CPU does the work: the processes only see their GPU number)."""
    data = tmp_path / "data"
    data.mkdir()
    opts = suite.AllOptions(data=(data,), output=tmp_path / "models", preset="tiny")
    slots = [suite.Slot("GPU 0", "cpu", {"CUDA_VISIBLE_DEVICES": "0"}),
             suite.Slot("GPU 1", "cpu", {"CUDA_VISIBLE_DEVICES": "1"})]
    outcomes = {"a": suite.Outcome(), "b": suite.Outcome()}
    (tmp_path / "models").mkdir()
    suite.run_jobs([("a", TOY), ("b", TOY)], opts, slots, outcomes, Reporter())
    a, b = outcomes["a"], outcomes["b"]
    assert a.status == b.status == "ok", (a.error, b.error)
    assert {a.summary["visible_gpus"], b.summary["visible_gpus"]} == {"0", "1"}
    assert {a.device, b.device} == {"GPU 0", "GPU 1"} and a.summary["pid"] != b.summary["pid"]
    assert a.summary["started"] < b.summary["ended"] and b.summary["started"] < a.summary["ended"], "overlapping"


def test_gpus_on_a_machine_without_one_is_a_one_line_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_a2p("train", "all", "--data", tmp_path, "-o", tmp_path / "m", "--gpus", "0,1")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--gpus 0,1" in lines[0] and "no GPU" in lines[0], proc.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("spec,why", [("0,x", "numbers"), ("1,1", "twice")])
def test_malformed_gpus_are_named(spec, why):
    from a2pcli.errors import InputError

    with pytest.raises(InputError, match=why):
        suite.parse_gpus(spec, 4)
    assert suite.parse_gpus("all", 3) == [0, 1, 2] and suite.parse_gpus(" 2,0 ", 3) == [2, 0]


def test_unknown_components_and_presets_are_refused_before_any_work(tmp_path):
    from a2pcli.errors import InputError

    opts = suite.AllOptions(data=(tmp_path,), output=tmp_path / "m", only=("nope",))
    with pytest.raises(InputError) as exc:
        suite.train_all(opts)
    assert "--only" in exc.value.one_line() and "audio2motion" in exc.value.one_line()
    lacking = {"line": Component("tests.toy_trainer:train", ("default",))}
    with pytest.raises(InputError, match="no preset 'tiny'"):
        suite.train_all(suite.AllOptions(data=(tmp_path,), output=tmp_path / "m", preset="tiny"), components=lacking)
    assert not (tmp_path / "m").exists()


def test_adding_a_component_is_one_entry_whose_functions_exist():
    from a2pcli.train.components import load_entry

    for name, comp in COMPONENTS.items():
        assert callable(load_entry(comp.train)) and (comp.prepare is None or callable(load_entry(comp.prepare)))
        assert "tiny" in comp.presets, f"{name} needs a tiny preset for CI"
    assert Path(__file__).with_name("toy_trainer.py").is_file()
