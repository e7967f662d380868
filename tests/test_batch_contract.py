"""What a shell script sees from a run with several inputs: each pair named and counted, stages that finish, a
line or a JSON event per pair as it finishes, one --json shape for every command and input count (also when
inputs fail), every input checked, the good ones made, the exit code of the first failure. And the rules
every output obeys: never an input, sidecars and frame folders replaced only with --overwrite, links never
followed. Runs on the repository's own examples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.test_animate import a2p

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXIT_BAD_INPUT = 2
SMALL = ("--crop", "--size", "96")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two portraits with a face, one without, a missing one, and 0.6 s of speech."""
    from PIL import Image

    from a2pcli.audio import load_audio, write_wav

    folder = tmp_path_factory.mktemp("inputs")
    face = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    face.save(folder / "astronaut.png")
    face.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirrored.png")
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    Image.fromarray(np.stack([ramp] * 3, -1)).save(folder / "gradient.png")
    speech = write_wav(folder / "speech.wav", load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5,
                                                         duration_s=0.6))
    turn = np.zeros((8, 6), np.float32)
    turn[:, 1] = np.linspace(0, 8, 8)
    np.save(folder / "turn.npy", turn)
    return {"good": folder / "astronaut.png", "mirrored": folder / "mirrored.png", "noface": folder / "gradient.png",
            "missing": folder / "missing.png", "speech": speech, "turn": folder / "turn.npy"}


def events_of(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_a_batch_renders_the_good_pairs_and_reports_the_missing_and_faceless_ones(capsys, tmp_path, inputs):
    portraits = [inputs["good"], inputs["missing"], inputs["noface"], inputs["mirrored"]]
    code, out, err = a2p(capsys, "audio2video", *portraits, inputs["speech"], *SMALL, "-o", tmp_path, "--json",
                         "--progress", "json")
    assert code == EXIT_BAD_INPUT, err
    summary = json.loads(out)
    assert [Path(r["portrait"]).name for r in summary["outputs"]] == ["astronaut.png", "mirrored.png"]
    assert [Path(f["portrait"]).name for f in summary["failed"]] == ["missing.png", "gradient.png"]
    assert all(f["exit_code"] == EXIT_BAD_INPUT and f["audio"] == str(inputs["speech"]) for f in summary["failed"])
    assert "not found" in summary["failed"][0]["error"] and "no face" in summary["failed"][1]["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut_speech.mp4", "mirrored_speech.mp4"]

    events = events_of(err)
    items = [e for e in events if e["event"] == "item"]
    assert sorted((e["index"], e["of"], e["item"]) for e in items) == [
        (1, 4, "astronaut_speech.mp4"), (2, 4, "missing_speech.mp4"), (3, 4, "gradient_speech.mp4"),
        (4, 4, "mirrored_speech.mp4")]
    assert [e["item"] for e in events if e["event"] == "item_done"] == ["astronaut_speech.mp4", "mirrored_speech.mp4"]
    assert sorted(e["item"] for e in events if e["event"] == "item_error") == ["gradient_speech.mp4",
                                                                              "missing_speech.mp4"]
    rendering = [e for e in events if e["event"] == "progress" and e["stage"] == "render"]
    assert {e.get("item") for e in rendering} == {"astronaut_speech.mp4", "mirrored_speech.mp4"}
    for item in ("astronaut_speech.mp4", "mirrored_speech.mp4"):  # every stage of a pair reaches 1
        stages = {e["stage"] for e in events if e["event"] == "progress" and e.get("item") == item}
        assert stages >= {"find the face", "render"}, stages
        for stage in stages:
            values = [e["value"] for e in events if e.get("item") == item and e.get("stage") == stage]
            assert values[-1] == 1.0, (item, stage, values)
    assert sum(e["message"].startswith("device:") for e in events if e["event"] == "info") == 1
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == EXIT_BAD_INPUT
    assert events[-1]["summary"] == summary


def test_each_pair_is_announced_and_reported_as_it_finishes(capsys, tmp_path, inputs):
    code, out, err = a2p(capsys, "audio2video", inputs["good"], inputs["mirrored"], inputs["missing"],
                         inputs["speech"], *SMALL, "-o", tmp_path)
    assert code == EXIT_BAD_INPUT and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: ") and "missing.png" in lines[0]  # checked before any work
    header = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert [lines[i].split("]")[0] for i in header] == ["[1/3", "[2/3"]
    done = [i for i, line in enumerate(lines) if line.startswith(str(tmp_path))]
    assert len(done) == 2 and header[0] < done[0] < header[1] < done[1], err  # each result line as the pair finishes
    assert sum(line.startswith("device:") for line in lines) == 1


def test_one_json_shape_for_one_input_and_on_failure(capsys, tmp_path, inputs):
    code, out, _ = a2p(capsys, "extract-pose", inputs["good"], "-o", tmp_path / "a.pose", "--json", "-q")
    s = json.loads(out)
    assert code == 0 and set(s) == {"outputs", "failed"} and len(s["outputs"]) == 1 and not s["failed"]
    assert s["outputs"][0]["output"] == str(tmp_path / "a.pose") and s["outputs"][0]["frames"] == 1
    code, out, err = a2p(capsys, "pose2vid", inputs["good"], tmp_path / "nope.npy", *SMALL, "-o", tmp_path / "b.mp4",
                         "--json")
    s = json.loads(out)
    assert code == EXIT_BAD_INPUT and s["outputs"] == [] and len(s["failed"]) == 1 and "nope.npy" in err
    assert s["failed"][0]["motion"] == str(tmp_path / "nope.npy") and s["failed"][0]["exit_code"] == EXIT_BAD_INPUT


def test_an_output_never_replaces_an_input(capsys, tmp_path, inputs):
    portrait = tmp_path / "face.png"
    portrait.write_bytes(inputs["good"].read_bytes())
    before = portrait.read_bytes()
    (tmp_path / "link.mp4").symlink_to(portrait)
    for args in (("extract-pose", portrait, "-o", portrait),
                 ("audio2video", portrait, inputs["speech"], *SMALL, "-o", portrait),
                 ("audio2video", portrait, inputs["speech"], *SMALL, "-o", tmp_path / "link.mp4"),
                 ("pose2vid", portrait, inputs["turn"], *SMALL, "-o", inputs["turn"])):
        code, _, err = a2p(capsys, *args, "--overwrite")
        assert code == EXIT_BAD_INPUT and "never overwritten" in err, (args, err)
    assert portrait.read_bytes() == before and inputs["turn"].is_file()


def test_meta_and_frames_obey_the_overwrite_rule_and_links_in_the_frames_folder_are_replaced(capsys, tmp_path, inputs):
    out, frames = tmp_path / "v.mp4", tmp_path / "frames"
    args = ("pose2vid", inputs["good"], inputs["turn"], *SMALL, "-o", out, "--meta", "--seed", "5")
    (tmp_path / "v.mp4.json").write_text("{}")
    code, _, err = a2p(capsys, *args)
    assert code == EXIT_BAD_INPUT and "--meta" in err and not out.exists()
    (tmp_path / "v.mp4.json").unlink()
    frames.mkdir()
    (frames / "000000.png").write_bytes(b"old")
    code, _, err = a2p(capsys, *args, "--frames-dir", frames)
    assert code == EXIT_BAD_INPUT and "already holds frames" in err and not out.exists()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (frames / "000001.png").symlink_to(victim)
    code, _, err = a2p(capsys, *args, "--frames-dir", frames, "--overwrite")
    assert code == 0, err
    assert victim.read_text() == "keep me" and not (frames / "000001.png").is_symlink()
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    assert json.loads((tmp_path / "v.mp4.json").read_text())["options"]["seed"] == 5


def test_ffmpeg_reads_a_file_named_like_a_protocol(tmp_path, inputs):
    from a2pcli.audio import load_audio, probe_audio

    plain = tmp_path / "a.wav"
    plain.write_bytes(inputs["speech"].read_bytes())
    odd = tmp_path / "concat:a.wav|a.wav"
    odd.write_bytes(plain.read_bytes())
    cwd = os.getcwd()
    os.chdir(tmp_path)  # where the concat protocol would find a.wav twice
    try:
        track = probe_audio(Path(odd.name))
        samples = load_audio(Path(odd.name))
    finally:
        os.chdir(cwd)
    assert track.duration_s == pytest.approx(probe_audio(plain).duration_s)
    assert len(samples) == len(load_audio(plain))
