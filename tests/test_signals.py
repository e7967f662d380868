"""Interruptions as a user or a scheduler makes them: real signals to a real `python -m a2pcli`
render, and the clean-up a later run does after a process that could not clean up (SIGKILL).
Inputs are the repository's own examples, so these run without ../shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from a2pcli.outputs import remove_stale_temporaries, temp_owner, temp_path_for
from tests.conftest import run_a2p

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PORTRAIT, SPEECH = EXAMPLES / "astronaut.jpg", EXAMPLES / "speech.flac"
START_TIMEOUT_S = 300  # the render must have started writing by then (a loaded 2-core machine)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if temp_owner(p.name) is not None)


def _start_render(out: Path, *extra: str) -> subprocess.Popen:
    """audio2video of the bundled example in a fresh interpreter, with Ctrl-C's default action even
    when the test runner itself ignores SIGINT (a background job)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("A2P_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "a2pcli", "audio2video", str(PORTRAIT), str(SPEECH), "-o", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signal_mid_render(proc: subprocess.Popen, folder: Path, signum: int) -> tuple[int, str]:
    """Wait until the encoder is writing its temporary video in `folder`, then send `signum`."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(p.stat().st_size > 0 for p in folder.glob("..*.video.mp4")):
        if proc.poll() is not None:
            pytest.fail(f"the render ended (exit {proc.returncode}) before it could be interrupted: "
                        f"{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the render did not start writing in time")
        time.sleep(0.05)
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"signal {signum} did not end the render")
    return proc.returncode, stderr


@pytest.mark.slow
def test_sigterm_mid_render_cleans_up_and_exits_143(tmp_path):
    out = tmp_path / "talk.mp4"
    code, stderr = _signal_mid_render(_start_render(out, "--quiet"), tmp_path, signal.SIGTERM)
    assert code == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines == ["error: terminated (SIGTERM); no partial output was kept"], stderr
    assert list(tmp_path.iterdir()) == [], "a terminated run must leave nothing behind"


@pytest.mark.slow
def test_ctrl_c_mid_render_says_interrupted_and_sends_the_json_error_event(tmp_path):
    out = tmp_path / "talk.mp4"
    code, stderr = _signal_mid_render(_start_render(out, "--progress", "json"), tmp_path, signal.SIGINT)
    assert code == 130, stderr
    last = json.loads(stderr.strip().splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 130 and "interrupted" in last["message"], stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_without_json_prints_one_interrupted_line(tmp_path):
    out = tmp_path / "talk.mp4"
    code, stderr = _signal_mid_render(_start_render(out, "--quiet"), tmp_path, signal.SIGINT)
    assert code == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted; no partial output was kept"], stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_later_run_removes_what_a_killed_run_left_and_nothing_else(tmp_path):
    out = tmp_path / "talk.mp4"
    code, _ = _signal_mid_render(_start_render(out, "--quiet"), tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    left = _temporaries(tmp_path)
    assert left, "SIGKILL cannot clean up: its temporary video is still there"
    # a running process's temporaries, look-alikes and the user's own files are kept
    alive = temp_path_for(tmp_path / "other.mp4")  # this test's own pid: alive
    alive.write_bytes(b"x")
    keep = [alive.name, ".talk.12345.part.mp4", "talk.12345.abcdef01.part.mp4", ".talk.1.ABCDEF01.part.mp4",
            "notes.txt"]
    for name in keep[1:]:
        (tmp_path / name).write_bytes(b"x")
    # any later run that writes into the folder sweeps it
    run_a2p("extract-pose", PORTRAIT, "-o", tmp_path / "face.pose", "--quiet", check=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["face.pose"])


def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    stale = [f".talk.{pid}.0123abcd.part.mp4", f"..talk.{pid}.0123abcd.part.k3j_9a8b.video.mp4",
             f".talk.mp4.{pid}.0123abcd.part.json", f".face.{pid}.89abcdef.part.pose"]
    kept = [f".talk.{os.getpid()}.0123abcd.part.mp4", f".talk.{pid}.0123abcd.part.mp4.bak",
            f"talk.{pid}.0123abcd.part.mp4", f".talk.{pid}.0123abc.part.mp4", "speech.wav"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".dir.{pid}.0123abcd.part").mkdir()  # a folder of that name: not a2p's
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [f".dir.{pid}.0123abcd.part"])


@pytest.mark.parametrize("args", [("extract-pose", "--bogus", "x.mp4"), ("extract-pose",),
                                  ("audio2video", "--fps", "abc", "a.png", "b.wav"), ("bogus-command",)])
def test_usage_errors_are_one_error_line_and_exit_2(args):
    proc = run_a2p(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], proc.stderr


@pytest.mark.parametrize("rank, local_rank, says", [("1", "1", False), ("2", "0", True), ("0", "0", True)])
def test_a_torchrun_process_stopped_by_torchrun_leaves_quietly(monkeypatch, capsys, rank, local_rank, says):
    """torchrun sends SIGTERM to the other processes when one fails: only a node's first process says so
    (rank 0 reports the failure itself), so a bad input under torchrun is one error line, not two."""
    from a2pcli.cli import app

    def stopped(argv):
        raise app.Terminated()

    monkeypatch.setattr(app, "_invoke", stopped)
    for name, value in (("TORCHELASTIC_RUN_ID", "run"), ("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", "4")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as ended:
        app.main(["doctor"])
    assert ended.value.code == 143
    assert ("terminated (SIGTERM)" in capsys.readouterr().err) == says
