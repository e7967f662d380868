"""The CLI surface: commands listed, help of every stub, exit codes, `a2p models` on a temporary registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import a2pcli
from a2pcli import paths, registry
from a2pcli.cli.app import main
from tests.conftest import run_a2p

EXIT_BAD_INPUT, EXIT_MODEL, EXIT_NOT_AVAILABLE = 2, 4, 5
COMMANDS = ["extract-pose", "audio2video", "vid2vid", "pose2vid", "train", "doctor", "models"]


def a2p(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process through its error boundary: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def top_help() -> str:
    return run_a2p("--help", check=0).stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_command(top_help, command):
    listed = any(line.split()[:1] == [command] for line in top_help.splitlines())
    assert listed, top_help


def test_version():
    proc = run_a2p("--version", check=0)
    assert proc.stdout.strip() == f"a2p {a2pcli.__version__}"


STUB_HELP = {
    ("audio2video",): ["PORTRAITS... AUDIO", "--output", "--pose", "--template-region", "pose+eyes+brows", "--still",
                       "--pose-scale", "--expression-scale", "--blink-rate", "--seed", "--model", "--renderer",
                       "--motion", "--steps", "--cfg", "--size", "--max-size", "--crop", "--fps", "--crf",
                       "--frames-dir", "--meta", "--batch-size", "--device", "--progress", "--quiet", "--json",
                       "--overwrite"],
    ("vid2vid",): ["PORTRAIT DRIVING", "--output", "--region", "expression", "--ref-frame", "--pose-scale",
                   "--expression-scale", "--face-index", "--crop", "--size", "--max-size", "--crf", "--frames-dir",
                   "--meta", "--renderer", "--steps", "--cfg", "--batch-size", "--device", "--progress", "--quiet",
                   "--json", "--overwrite"],
    ("pose2vid",): ["PORTRAIT MOTION", "--audio", "--fps", "--region", "--ref-frame", "--face-index", "--renderer",
                    "--batch-size", "--device", "--overwrite"],
    ("train",): ["audio2motion"],
    ("train", "audio2motion"): ["--data", "--output", "--preset", "tiny", "--epochs", "--batch-size", "--lr",
                                "--val-speakers", "--resume", "--seed", "--device", "--progress", "--quiet", "--json"],
    ("models",): ["list", "verify", "pull", "import"],
    ("models", "pull"): ["NAME", "cache", "sha256"],
    ("models", "import"): ["NAME FOLDER", "AniPortrait", "pretrained_model"],
}


@pytest.mark.parametrize("command", list(STUB_HELP), ids=" ".join)
def test_stub_help(capsys, command):
    code, out, _ = a2p(capsys, *command, "--help")
    assert code == 0
    for word in STUB_HELP[command]:
        assert word in out, f"{word!r} missing from `a2p {' '.join(command)} --help`:\n{out}"


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Input files that exist (their content does not matter to the stubs' checks)."""
    for name in ("face.png", "other.png", "speech.wav", "drive.mp4", "motion.pose", "template.npy"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "clips").mkdir()
    return tmp_path


BAD_INPUT_RUNS = [  # (argv, text the error must contain)
    (["audio2video", "face.png", "missing.wav"], "missing.wav"),
    (["audio2video", "missing.png", "speech.wav"], "missing.png"),
    (["audio2video", "face.png", "missing.png", "speech.wav"], "missing.png"),
    (["audio2video", "face.png", "speech.wav", "--pose", "missing.pose"], "missing.pose"),
    (["audio2video", "face.png", "speech.wav", "--pose", "speech.wav"], "speech.wav"),
    (["audio2video", "face.png"], "audio"),
    (["audio2video", "face.png", "speech.wav", "--batch-size", "lots"], "--batch-size"),
    (["audio2video", "face.png", "speech.wav", "--template-region", "lips"], "--template-region"),
    # AniPortrait's audio2mesh/audio2pose landmarks are drawn for the diffusion renderer only
    (["audio2video", "face.png", "speech.wav", "--motion", "aniportrait"], "--renderer aniportrait"),
    (["audio2video", "face.png", "other.png", "speech.wav", "-o", "one.mp4"], "one.mp4"),
    (["vid2vid", "face.png", "missing.mp4"], "missing.mp4"),
    (["vid2vid", "missing.png", "drive.mp4"], "missing.png"),
    (["vid2vid", "face.png", "drive.mp4", "--crf", "99"], "--crf"),
    (["vid2vid", "face.png", "drive.mp4", "-o", "face.png"], "face.png"),
    (["pose2vid", "face.png", "missing.pose"], "missing.pose"),
    (["pose2vid", "face.png", "drive.mp4"], "drive.mp4"),
    (["pose2vid", "face.png", "motion.pose", "--audio", "missing.wav"], "missing.wav"),
    # the embedded renderer reads the files: these hold one byte each
    (["vid2vid", "face.png", "drive.mp4"], "drive.mp4"),
    (["pose2vid", "face.png", "motion.pose"], "motion.pose"),
    (["pose2vid", "face.png", "template.npy"], "template.npy"),
    (["pose2vid", "face.png", "motion.pose", "--audio", "speech.wav"], "speech.wav"),
    (["audio2video", "face.png", "speech.wav"], "face.png"),  # the portrait first: the first problem is reported
    (["train", "audio2motion", "--data", "missing-clips", "-o", "model"], "missing-clips"),
    (["train", "audio2motion", "--data", "clips", "-o", "model", "--resume", "missing.pt"], "missing.pt"),
    (["train", "audio2motion", "-o", "model"], "--data"),
]


@pytest.mark.parametrize("argv,named", BAD_INPUT_RUNS, ids=[" ".join(a) for a, _ in BAD_INPUT_RUNS])
def test_stub_bad_input(capsys, monkeypatch, inputs, argv, named):
    monkeypatch.chdir(inputs)
    code, out, err = a2p(capsys, *argv)
    assert code == EXIT_BAD_INPUT, err
    assert named in err


def test_stub_existing_output_needs_overwrite(capsys, monkeypatch, inputs):
    monkeypatch.chdir(inputs)
    (inputs / "face_speech.mp4").write_bytes(b"an earlier result")
    code, _, err = a2p(capsys, "audio2video", "face.png", "speech.wav")
    assert code == EXIT_BAD_INPUT and "face_speech.mp4" in err and "--overwrite" in err
    code, _, err = a2p(capsys, "audio2video", "face.png", "speech.wav", "--overwrite")
    assert code == EXIT_BAD_INPUT and "face.png" in err, err  # past the output check: the one-byte portrait


def test_stub_unknown_model(capsys, monkeypatch, inputs):
    monkeypatch.chdir(inputs)
    code, _, err = a2p(capsys, "audio2video", "face.png", "speech.wav", "--model", "no-such-model")
    assert code == EXIT_MODEL and "no-such-model" in err


# --- a2p models, on a temporary registry -------------------------------------------------------------------------

EMBEDDED_BYTES = b"tiny embedded weights\n" * 10
FETCHED_BYTES = b"fetched weights" * 100


def _file_record(rel: str, data: bytes) -> dict:
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@pytest.fixture
def reg(tmp_path, monkeypatch) -> dict:
    shipped, cache_root = tmp_path / "shipped", tmp_path / "cache"
    (shipped / "tiny-embedded").mkdir(parents=True)
    embedded_file = shipped / "tiny-embedded" / "weights.bin"
    embedded_file.write_bytes(EMBEDDED_BYTES)
    common = {"description": "test model", "licence": "Apache-2.0", "source": "tests"}
    models = {
        "tiny-embedded": {"kind": "embedded", **common, "files": [_file_record("weights.bin", EMBEDDED_BYTES)]},
        "big-fetched": {"kind": "fetched", **common, "files": [_file_record("unet.safetensors", FETCHED_BYTES)]},
    }
    (shipped / "registry.json").write_text(json.dumps({"schema": 1, "models": models}))
    monkeypatch.setattr(registry, "shipped_models_dir", lambda: shipped)
    monkeypatch.setattr(paths, "shipped_models_dir", lambda: shipped)
    monkeypatch.setenv("A2P_CACHE_DIR", str(cache_root))
    fetched_file = cache_root / "models" / "big-fetched" / "unet.safetensors"
    return {"cache": cache_root, "embedded": embedded_file, "fetched": fetched_file}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_models_list_json(capsys, reg):
    code, out, _ = a2p(capsys, "models", "list", "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["cache_dir"] == str(reg["cache"])
    models = {m["name"]: m for m in listing["models"]}
    assert models["tiny-embedded"]["kind"] == "embedded" and models["tiny-embedded"]["status"] == "present"
    assert models["tiny-embedded"]["size_bytes"] == len(EMBEDDED_BYTES)
    assert models["big-fetched"]["kind"] == "fetched" and models["big-fetched"]["status"] == "missing"
    assert models["big-fetched"]["folder"] == str(reg["fetched"].parent)
    assert models["big-fetched"]["licence"] == "Apache-2.0"


def test_models_list_table(capsys, reg):
    _flip_a_byte(reg["embedded"])
    code, out, _ = a2p(capsys, "models", "list")
    assert code == 0
    for word in ("tiny-embedded", "big-fetched", "embedded", "fetched", "missing", "mismatch", str(reg["cache"])):
        assert word in out, out


def test_models_verify_ok(capsys, reg):
    code, out, err = a2p(capsys, "models", "verify")
    assert code == 0, err  # a fetched model that is not pulled yet is reported, not failed
    assert str(reg["embedded"]) in out and "present" in out
    assert str(reg["fetched"]) in out and "missing" in out


def test_models_verify_fetched(capsys, reg):
    reg["fetched"].parent.mkdir(parents=True)
    reg["fetched"].write_bytes(FETCHED_BYTES)
    code, out, err = a2p(capsys, "models", "verify", "big-fetched", "--json")
    assert code == 0, err
    assert json.loads(out)["models"][0]["status"] == "present"
    _flip_a_byte(reg["fetched"])  # same size: only the re-hash can tell
    code, out, err = a2p(capsys, "models", "verify", "big-fetched")
    assert code == 1 and str(reg["fetched"]) in err and "hash mismatch" in out


def test_models_verify_corrupt_embedded(capsys, reg):
    _flip_a_byte(reg["embedded"])
    code, out, err = a2p(capsys, "models", "verify")
    assert code == 1
    assert str(reg["embedded"]) in err and "hash mismatch" in out
    code, out, _ = a2p(capsys, "models", "verify", "tiny-embedded", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["models"][0]["files"][0]["status"] == "hash mismatch"


def test_models_verify_missing_embedded(capsys, reg):
    reg["embedded"].unlink()
    code, _, err = a2p(capsys, "models", "verify", "tiny-embedded")
    assert code == 1 and str(reg["embedded"]) in err


def test_models_unknown_name(capsys, reg):
    for argv in (["verify", "no-such-model"], ["verify", "tiny-embedded", "no-such-model"], ["pull", "no-such-model"]):
        code, _, err = a2p(capsys, "models", *argv)
        assert code == EXIT_MODEL and "no-such-model" in err, err


def test_models_pull_and_import_not_available(capsys, reg, tmp_path):
    code, _, err = a2p(capsys, "models", "pull", "big-fetched")
    assert code == EXIT_NOT_AVAILABLE and "not available yet" in err
    code, _, err = a2p(capsys, "models", "import", "big-fetched", tmp_path)
    assert code == EXIT_NOT_AVAILABLE and "not available yet" in err
    code, _, err = a2p(capsys, "models", "import", "big-fetched", tmp_path / "nope")
    assert code == EXIT_BAD_INPUT and "nope" in err


def test_installed_package_finds_its_models_from_any_directory(tmp_path):
    """The console script, run from an unrelated directory, finds the embedded models it ships."""
    import shutil

    exe = shutil.which("a2p", path=str(Path(sys.executable).parent)) or shutil.which("a2p")
    assert exe, "the a2p console script is not installed next to this interpreter"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "A2P_DEBUG")}
    proc = subprocess.run([exe, "models", "verify", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    embedded = [m for m in report["models"] if m["kind"] == "embedded"]
    assert embedded and all(m["status"] == "present" for m in embedded), report
