"""Batches shared out over several processes: torchrun's (a real `torch.distributed.run`, two CPU processes, gloo)
and a job scheduler's array tasks (`--shard K/N`). Every job is rendered exactly once, by the process whose
share it is; a killed run started again renders only the rest; rank 0 writes the results of all; a failed job
on any process fails the run. Tiny jobs: the repository's example portrait, 0.6 s of speech, 96x96 crops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_animate import a2p
from tests.test_manifest import EXAMPLES, results, write_manifest

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"crop": True, "size": 96}
GOOD = 4  # jobs that render; the manifest's 4th line names a missing portrait (rank 1's, with two processes)
EXIT_BAD_INPUT = 2


def torchrun_cmd(*args, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "a2pcli", *map(str, args)]


def torchrun_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("A2P_DEBUG", None)
    return env


@pytest.fixture
def project(tmp_path) -> Path:
    """A portrait and 0.6 s of speech, and a manifest of four jobs (seeds 0-3) with a bad line among them."""
    from a2pcli.audio import load_audio, write_wav

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes((EXAMPLES / "astronaut.jpg").read_bytes())
    write_wav(tmp_path / "in" / "speech.wav", load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5, duration_s=0.6))
    lines = [{"command": "audio2video", "portrait": "in/face.jpg", "audio": "in/speech.wav", "seed": s,
              "output": f"job{s}.mp4", **SMALL} for s in range(GOOD)]
    lines.insert(3, {"command": "audio2video", "portrait": "in/missing.jpg", "audio": "in/speech.wav", **SMALL})
    write_manifest(tmp_path / "jobs.jsonl", lines)
    return tmp_path


def made(out: Path) -> dict[str, int]:
    """The finished videos (a sidecar beside each), by name, with their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("job*.mp4")) if Path(f"{p}.json").is_file()}


def json_events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_two_processes_render_every_job_once_and_a_killed_run_renders_only_the_rest(project):
    out, manifest = project / "out", project / "jobs.jsonl"
    args = ["batch", manifest, "-o", out, "--progress", "json"]

    # a run killed as a scheduler kills it (SIGTERM to torchrun, which stops its processes) once a job is done
    with open(project / "first.err", "w") as err:
        first = subprocess.Popen(torchrun_cmd(*args), cwd=ROOT, env=torchrun_env(), stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True)
        deadline = time.monotonic() + 300
        while not made(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
    before = made(out)
    assert 0 < len(before) < GOOD, (before, (project / "first.err").read_text()[-3000:])
    assert not (out / "jobs.results.jsonl").exists(), "no results from a killed run"

    proc = subprocess.run(torchrun_cmd(*args, "--json"), cwd=ROOT, env=torchrun_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0, "a failed job on rank 1 fails the run"
    rows = results(out / "jobs.results.jsonl")
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5], "rank 0 wrote every process's lines"
    assert [r["rank"] for r in rows] == [0, 1, 0, 1, 0], "each line run by the process whose share it is"
    assert rows[3]["status"] == "failed" and "not found" in rows[3]["error"] and rows[3]["exit_code"] == EXIT_BAD_INPUT
    status = {Path(r["output"]).name: r["status"] for r in rows if r["status"] != "failed"}
    assert {n for n, s in status.items() if s == "skipped"} == set(before), "what the killed run made is kept"
    rendered = {n for n, s in status.items() if s == "done"}
    assert rendered == {f"job{s}.mp4" for s in range(GOOD)} - set(before), "only the rest is rendered, once"
    after = made(out)
    assert sorted(after) == [f"job{s}.mp4" for s in range(GOOD)]
    assert all(after[n] == t for n, t in before.items()), "no finished video written again"
    summary = json.loads(proc.stdout)  # one summary, rank 0's, of both processes' jobs
    assert len(summary["outputs"]) == GOOD and [r["line"] for r in summary["failed"]] == [4]

    events = json_events(proc.stderr)
    assert {e["rank"] for e in events} == {0, 1} and all(e["rank"] in (0, 1) for e in events)
    for e in (e for e in events if e["event"] == "item"):
        line = next(r["line"] for r in rows if Path(r["output"]).name == e["item"])
        assert e["rank"] == (line - 1) % 2, e
    ends = [e for e in events if e["event"] in ("done", "error")]
    assert sorted((e["rank"], e["event"]) for e in ends) == [(0, "done"), (1, "error")], "each its own jobs' end"


@pytest.mark.slow
def test_audio2video_under_torchrun_shares_its_pairs_and_skips_those_made(tmp_path, monkeypatch):
    from a2pcli.audio import load_audio, write_wav

    for name in ("ana.jpg", "ben.jpg"):
        (tmp_path / name).write_bytes((EXAMPLES / "astronaut.jpg").read_bytes())
    write_wav(tmp_path / "hello.wav", load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5, duration_s=0.6))
    out = tmp_path / "out"
    out.mkdir()
    args = ["audio2video", tmp_path / "ana.jpg", tmp_path / "ben.jpg", tmp_path / "hello.wav", "-o", out, "--crop",
            "--size", "96", "--json", "--progress", "none"]
    proc = subprocess.run(torchrun_cmd(*args), cwd=ROOT, env=torchrun_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [(Path(r["output"]).name, r["status"], r["rank"]) for r in summary["outputs"]] == [
        ("ana_hello.mp4", "done", 0), ("ben_hello.mp4", "done", 1)]
    assert "rank 1: " in proc.stderr and "2 jobs on 2 processes: 2 done" in proc.stderr, proc.stderr
    meta = json.loads((out / "ben_hello.mp4.json").read_text())
    assert meta["command"] == "audio2video" and meta["options"]["portrait"]["size"] == 96

    # rank 1's video is the one a plain run makes (with the same thread count: float sums depend on it)
    from tests.conftest import run_a2p
    from tests.test_animate import read_video

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun_env() runs it
    plain = tmp_path / "plain.mp4"
    run_a2p("audio2video", tmp_path / "ben.jpg", tmp_path / "hello.wav", "-o", plain, "--crop", "--size", "96",
            check=0)
    (a, _), (b, _) = read_video(out / "ben_hello.mp4"), read_video(plain)
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 0.05

    again = subprocess.run(torchrun_cmd(*args), cwd=ROOT, env=torchrun_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in json.loads(again.stdout)["outputs"]] == ["skipped", "skipped"]


# --- a scheduler's array: --shard K/N, the last task writes the results, --collect ---------------------------------


def test_array_tasks_each_run_their_share_and_the_last_writes_the_results(capsys, project):
    out, manifest = project / "out", project / "jobs.jsonl"
    part = [out / f"jobs.results.jsonl.part{k}-of-2" for k in range(2)]

    code, _, err = a2p(capsys, "batch", manifest, "-o", out, "--shard", "1/2", "-q")
    assert code == EXIT_BAD_INPUT, err  # task 1 holds the bad line
    assert sorted(made(out)) == ["job1.mp4"] and part[1].is_file() and not part[0].exists()
    assert not (out / "jobs.results.jsonl").exists(), "task 0 has not finished"

    code, stdout, err = a2p(capsys, "batch", manifest, "-o", out, "--collect", "--json")
    assert code == 1 and "3 not run yet" in err, err
    rows = results(out / "jobs.results.jsonl")
    assert [r["status"] for r in rows] == ["missing", "done", "missing", "failed", "missing"]
    assert len(json.loads(stdout)["failed"]) == 4

    code, _, err = a2p(capsys, "batch", manifest, "-o", out, "--shard", "0/2")
    assert code == 0, err
    assert "shard 0/2: 3 jobs: 3 done, 0 skipped, 0 failed" in err and "jobs.results.jsonl" in err
    rows = results(out / "jobs.results.jsonl")
    assert [(r["status"], r["rank"]) for r in rows] == [("done", 0), ("done", 1), ("done", 0), ("failed", 1),
                                                        ("done", 0)], "the last task wrote the whole file"
    assert sorted(made(out)) == [f"job{s}.mp4" for s in range(GOOD)]


def test_shard_values_are_checked(capsys, project, monkeypatch):
    from a2pcli.pipeline.shards import parse_shard

    out, manifest = project / "out", project / "jobs.jsonl"
    for bad, why in (("2/2", "does not exist"), ("1of4", "expected K/N"), ("slurm", "SLURM_ARRAY_TASK_ID")):
        code, _, err = a2p(capsys, "batch", manifest, "-o", out, "--shard", bad)
        assert code == EXIT_BAD_INPUT and why in err and "--shard" in err, err
    assert not out.exists() or not any(out.iterdir()), "nothing made"
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard("slurm", env) == (2, 4) and parse_shard(" 3 / 8 ") == (3, 8) and parse_shard(None) is None
    code, _, err = a2p(capsys, "batch", manifest, "-o", out, "--collect")
    assert code == EXIT_BAD_INPUT and "no part" in err, err


def test_every_process_has_its_own_place_and_gpu():
    from a2pcli.launch import Launch, node_gpu
    from a2pcli.pipeline.manifest import jobs_for_rank
    from a2pcli.pipeline.shards import Shard

    # an array of 3 tasks, each a torchrun run of 2 processes: 6 places, each job in exactly one
    places = [Shard(Launch(r, r, 2), (k, 3)) for k in range(3) for r in range(2)]
    assert [p.index for p in places] == list(range(6)) and {p.count for p in places} == {6}
    shares = [jobs_for_rank(20, p.index, p.count) for p in places]
    assert sorted(j for s in shares for j in s) == list(range(20))
    assert places[3].label == "shard 1/3, rank 1 of 2" and Shard().label == "one process"
    # the local_rank-th GPU of the node, round robin over more processes than GPUs; none without GPUs
    assert [node_gpu(r, {"CUDA_VISIBLE_DEVICES": "2,3"}) for r in range(3)] == ["2", "3", "2"]
    assert node_gpu(1, {"CUDA_VISIBLE_DEVICES": ""}) is None


def test_under_torchrun_a_job_naming_a_numbered_gpu_is_refused(tmp_path):
    from dataclasses import replace

    from a2pcli import RenderOptions, TalkJob
    from a2pcli.pipeline.manifest import BadLine, talk_jobs
    from a2pcli.pipeline.shards import own_gpu_only

    (tmp_path / "a.png").touch()
    job = TalkJob(render=RenderOptions(device="cuda:1"))
    entry = talk_jobs([tmp_path / "a.png"], [tmp_path / "s.wav"], None, job)[0]
    refused = own_gpu_only(entry)
    assert isinstance(refused, BadLine) and "--device cuda:1" in refused.error.one_line()
    kept = replace(entry, job=replace(job, render=RenderOptions(device="cuda")))
    assert own_gpu_only(kept) is kept
