"""The output file a user names is the file they get: its container follows the extension, or the
run is refused with one line before anything is written. Runs on the repository's examples."""

from __future__ import annotations

import subprocess

from tests.conftest import EXAMPLE_MOTION, EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, ffmpeg_exe, run_a2p, run_json


def _info(path) -> str:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def test_avi_output_is_an_avi_that_plays_with_its_sound(tmp_path):
    out = tmp_path / "talk.avi"
    summary = run_json("pose2vid", EXAMPLE_PORTRAIT, EXAMPLE_MOTION, "--audio", EXAMPLE_SPEECH, "--crop", "--size",
                       "128", "-o", out)
    info = _info(out)
    assert "Input #0, avi" in info and "Video: h264" in info and "Audio: pcm_s16le" in info, info
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == summary["outputs"][0]["frames"] == 120  # the 4-second example motion at 30 fps


def test_an_extension_a2p_cannot_write_is_refused_in_one_line(tmp_path):
    out = tmp_path / "talk.gif"
    proc = run_a2p("pose2vid", EXAMPLE_PORTRAIT, EXAMPLE_MOTION, "--crop", "--size", "128", "-o", out, "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}:") and "talk.mp4" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []
