"""`a2p batch`: a manifest of jobs run in order, bad lines and failed jobs reported while the others run, a
results file, and a second run that makes only what is missing. Runs on the repository's own examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_animate import a2p

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXIT_BAD_INPUT = 2


def write_manifest(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """A folder with a portrait, 0.6 s of speech and a head turn, named relative to the manifest."""
    from a2pcli.audio import load_audio, write_wav

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes((EXAMPLES / "astronaut.jpg").read_bytes())
    write_wav(tmp_path / "in" / "speech.wav", load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5, duration_s=0.6))
    turn = np.zeros((8, 6), np.float32)
    turn[:, 1] = np.linspace(0, 8, 8)
    np.save(tmp_path / "in" / "turn.npy", turn)
    return tmp_path


def jobs(seed: int = 3) -> list:
    small = {"crop": True, "size": 96}
    return [
        {"command": "audio2video", "portrait": "in/face.jpg", "audio": "in/speech.wav", "seed": seed, **small},
        {"command": "extract-pose", "video": "in/face.jpg"},
        {"command": "pose2vid", "portrait": "in/face.jpg", "motion": "in/turn.npy", "audio": "in/speech.wav",
         "output": "turned.mp4", "pose-scale": 0.5, **small},
        "{not json",
        {"command": "lipsync", "portrait": "in/face.jpg"},
        {"command": "vid2vid", "portrait": "in/face.jpg", "driving": "in/missing.mp4", **small},
        {"command": "audio2video", "portrait": "in/face.jpg", "audio": "in/speech.wav", "blink-rate": "often"},
    ]


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_manifest_runs_its_jobs_reports_bad_lines_and_resumes(capsys, project):
    manifest = write_manifest(project / "jobs.jsonl", jobs())
    out = project / "out"
    code, stdout, err = a2p(capsys, "batch", manifest, "-o", out, "--json", "-q")
    assert code == EXIT_BAD_INPUT, err
    made = ["face.pose", "face_speech.mp4", "turned.mp4"]
    assert sorted(p.name for p in out.iterdir()) == sorted(made + [m + ".json" for m in made] + ["jobs.results.jsonl"])
    rows = results(out / "jobs.results.jsonl")
    assert [(r["line"], r["status"]) for r in rows] == [(1, "done"), (2, "done"), (3, "done"), (4, "failed"),
                                                         (5, "failed"), (6, "failed"), (7, "failed")]
    assert rows[0]["inputs"] == {"portrait": str(project / "in" / "face.jpg"),
                                 "audio": str(project / "in" / "speech.wav")}
    assert rows[0]["output"] == str(out / "face_speech.mp4") and rows[0]["elapsed_s"] > 0 and rows[0]["timings_s"]
    assert "not JSON" in rows[3]["error"] and "lipsync" in rows[4]["error"] and "missing.mp4" in rows[5]["error"]
    assert "often" in rows[6]["error"]
    summary = json.loads(stdout)
    assert [r["line"] for r in summary["outputs"]] == [1, 2, 3]
    assert [r["line"] for r in summary["failed"]] == [4, 5, 6, 7]
    meta = json.loads((out / "turned.mp4.json").read_text())
    assert meta["options"]["retarget"]["pose_scale"] == 0.5 and meta["summary"]["frames"] == 8

    # a killed batch, another seed for job 1: only what is missing is made; a changed job is not overwritten
    (out / "turned.mp4").unlink()
    kept = (out / "face.pose").stat().st_mtime_ns
    write_manifest(manifest, jobs(seed=4))
    code, _, err = a2p(capsys, "batch", manifest, "-o", out, "-q")
    rows = results(out / "jobs.results.jsonl")
    assert [r["status"] for r in rows[:3]] == ["failed", "skipped", "done"], rows
    assert "already exists" in rows[0]["error"] and (out / "turned.mp4").is_file()
    assert (out / "face.pose").stat().st_mtime_ns == kept


def test_each_process_of_a_shared_manifest_gets_its_own_jobs():
    from a2pcli.pipeline.manifest import jobs_for_rank

    shares = [jobs_for_rank(10, rank, 3) for rank in range(3)]
    assert sorted(j for share in shares for j in share) == list(range(10)) and shares[0] == [0, 3, 6, 9]
    assert jobs_for_rank(10) == list(range(10)) and jobs_for_rank(2, 2, 4) == []
    with pytest.raises(ValueError):
        jobs_for_rank(10, 3, 3)
