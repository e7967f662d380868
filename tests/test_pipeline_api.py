"""The Python API, called as a notebook or a web service would: no CLI, inputs as files or arrays, options as the
job dataclasses, typed results with the fields of --json, typed errors. Runs on the repository's own examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SR = 16000


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    from a2pcli.media import load_image

    return load_image(EXAMPLES / "astronaut.jpg")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    from a2pcli.audio import load_audio

    return load_audio(EXAMPLES / "speech.flac", SR, start_s=0.5, duration_s=0.8)


def small(**kw):
    from a2pcli import PortraitOptions, TalkJob

    return TalkJob(portrait=PortraitOptions(crop=True, size=96), **kw)


def decoded_frames(path: Path) -> int:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    next(gen)
    return sum(1 for _ in gen)


def test_the_api_makes_a_talking_video_from_arrays_without_the_cli(tmp_path, face, speech):
    import a2pcli
    from a2pcli import Models, VideoResult, audio2video

    models = Models()
    out = tmp_path / "talk.mp4"
    result = audio2video(face, speech, out, small(seed=3), models=models)
    assert isinstance(result, VideoResult) and result.output == out and out.is_file()
    assert result.frames == 20 == decoded_frames(out) and result.size == (96, 96) and result.renderer == "embedded"
    record = result.to_json()
    assert {"output", "portrait", "audio", "frames", "fps", "duration_s", "size", "device", "notes", "timings_s",
            "elapsed_s", "frames_per_s"} <= set(record)
    json.dumps(record)  # JSON-ready as --json prints it
    model = models.audio2motion()
    audio2video(face, speech, tmp_path / "again.mp4", small(seed=3), models=models)
    assert models.audio2motion() is model, "a Models holder loads the speech model once"
    assert a2pcli.__version__


def test_the_api_reenacts_an_extracted_motion_and_the_sidecar_records_the_seed(tmp_path, face):
    from PIL import Image

    from a2pcli import DriveJob, OutputOptions, PortraitOptions, extract_pose, pose2vid

    still = tmp_path / "face.png"
    Image.fromarray(face).save(still)
    pose = extract_pose(still, tmp_path / "face.pose")
    assert pose.frames == 1 and len(pose.motion) == 1 and (tmp_path / "face.pose").is_file()
    template = np.zeros((10, 6), np.float32)
    template[:, 1] = np.linspace(0, 8, 10)  # a head turn
    np.save(tmp_path / "turn.npy", template)
    job = DriveJob(seed=7, portrait=PortraitOptions(crop=True, size=96), output=OutputOptions(meta=True))
    result = pose2vid(still, tmp_path / "turn.npy", tmp_path / "turn.mp4", job)
    assert result.frames == 10 and result.inputs == {"portrait": still, "motion": tmp_path / "turn.npy"}
    meta = json.loads((tmp_path / "turn.mp4.json").read_text())
    assert meta["command"] == "pose2vid" and meta["options"]["seed"] == 7
    assert meta["options"]["render"]["diffusion"]["seed"] == 7, "one seed drives every random choice"
    assert [i["name"] for i in meta["inputs"]] == ["portrait", "motion"] and meta["summary"]["frames"] == 10


def test_api_errors_are_typed_and_name_the_input(tmp_path, speech):
    from a2pcli import audio2video
    from a2pcli.errors import InputError, NoFaceError

    with pytest.raises(InputError) as missing:
        audio2video(tmp_path / "missing.png", speech, tmp_path / "x.mp4", small())
    assert "missing.png" in missing.value.one_line() and missing.value.exit_code == 2
    gray = np.full((128, 128, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        audio2video(gray, speech, tmp_path / "y.mp4", small())
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))


def test_the_cli_defaults_are_the_options_defaults():
    import typer

    from a2pcli import DriveJob, ExtractJob, TalkJob
    from a2pcli.cli.app import app
    from a2pcli.cli.cmd_extract import extract_job
    from a2pcli.cli.cmd_render import drive_job, talk_job

    commands = typer.main.get_command(app).commands

    def parsed(name: str, *args: str) -> dict:
        with commands[name].make_context(name, list(args)) as ctx:
            return dict(ctx.params)

    assert talk_job(**parsed("audio2video", "a.png", "b.wav")) == TalkJob()
    assert drive_job(**parsed("vid2vid", "a.png", "d.mp4")) == DriveJob()
    assert drive_job(**parsed("pose2vid", "a.png", "m.pose")) == DriveJob()
    assert extract_job(**parsed("extract-pose", "v.mp4")) == ExtractJob()


def test_importing_the_api_loads_no_torch():
    code = ("import sys, a2pcli; from a2pcli import audio2video, TalkJob, DriveJob, Models; "
            "print('torch' in sys.modules, 'mediapipe' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split() == ["False", "False"]
