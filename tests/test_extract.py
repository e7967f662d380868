"""`a2p extract-pose` end to end on real video through real MediaPipe and ffmpeg."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from a2pcli.motion import load_pose, save_pose
from tests.conftest import EXAMPLE_PORTRAIT, driving_video, ffmpeg_exe, media, run_a2p, run_json, second_portrait


def _frames_in(path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


@pytest.fixture(scope="module")
def d3_pose(tmp_path_factory):
    out = tmp_path_factory.mktemp("d3") / "d3.pose"
    summary = run_json("extract-pose", media("liveportrait_d3.mp4", fallback=driving_video), "-o", out)
    return out, summary["outputs"][0]


def test_d3_frame_count_landmarks_and_head_turn(d3_pose):
    out, s = d3_pose
    m = load_pose(out)
    src = media("liveportrait_d3.mp4")
    assert len(m) == s["frames"] == _frames_in(src)
    assert m.landmarks.shape == (len(m), 478, 3) and m.valid.all()
    w, h = m.frame_size
    # landmarks lie on the face: inside the frame, the face box a sensible share of it
    assert (m.landmarks[..., 0] >= -5).all() and (m.landmarks[..., 0] <= w + 5).all()
    box_w = m.landmarks[..., 0].max(1) - m.landmarks[..., 0].min(1)
    assert (box_w > 0.15 * w).all() and (box_w < 0.95 * w).all()
    yaw, pitch = m.euler[:, 0], m.euler[:, 1]
    assert np.ptp(yaw) > 20, "d3 turns its head"
    assert np.abs(yaw).max() < 60 and np.abs(pitch).max() < 45


def test_d0_barely_moves(tmp_path):
    out = tmp_path / "d0.pose"
    s = run_json("extract-pose", media("liveportrait_d0.mp4"), "-o", out)["outputs"][0]
    m = load_pose(out)
    assert len(m) == _frames_in(media("liveportrait_d0.mp4"))
    assert np.ptp(m.euler, axis=0).max() < 8, s["pose_range_deg"]


def test_pose_file_round_trips(d3_pose, tmp_path):
    out, _ = d3_pose
    m = load_pose(out)
    # the documented identity: landmarks == scale * (reference + expression) @ R.T + translation
    from a2pcli.headpose import apply_pose

    rebuilt = apply_pose(m.reference + m.expression, m.rotation, m.translation, m.scale)
    assert np.allclose(rebuilt, m.landmarks, atol=0.05)
    save_pose(m, tmp_path / "again.pose")
    m2 = load_pose(tmp_path / "again.pose")
    for k in ("landmarks", "rotation", "translation", "scale", "expression", "valid"):
        assert np.array_equal(getattr(m, k), getattr(m2, k)), k
    assert m2.meta["source"]["sha256"] == m.meta["source"]["sha256"] and m2.fps == m.fps
    # numpy alone reads it
    with np.load(out) as z:
        assert str(z["format"]) == "a2p.pose" and int(z["version"]) == 1


def test_default_output_is_beside_the_input_and_batch_to_a_directory(tmp_path):
    a = tmp_path / "a.jpg"
    b = tmp_path / "b.jpg"
    shutil.copy(media("liveportrait_s12.jpg", fallback=EXAMPLE_PORTRAIT), a)
    shutil.copy(media("liveportrait_s9.jpg", fallback=second_portrait), b)
    run_a2p("extract-pose", a, check=0)
    assert (tmp_path / "a.pose").exists()
    outdir = tmp_path / "poses"
    outdir.mkdir()
    s = run_json("extract-pose", a, b, "-o", outdir)
    assert sorted(p.name for p in outdir.iterdir()) == ["a.pose", "b.pose"] and len(s["outputs"]) == 2
    proc = run_a2p("extract-pose", a, "-o", outdir)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_png_holding_jpeg_data_works(tmp_path):
    fake_png = tmp_path / "portrait.png"
    shutil.copy(media("liveportrait_s12.jpg", fallback=EXAMPLE_PORTRAIT), fake_png)
    s = run_json("extract-pose", fake_png)["outputs"][0]
    assert s["frames"] == 1 and s["face_frames"] == 1


def test_small_face_in_a_large_image_is_found(tmp_path):
    s = run_json("extract-pose", media("sadtalker_full_body_1.png"), "-o", tmp_path / "fb.pose")["outputs"][0]
    assert s["face_frames"] == 1


def test_progress_json_lines_on_stderr(tmp_path):
    proc = run_a2p("extract-pose", media("liveportrait_d0.mp4", fallback=driving_video), "-o", tmp_path / "x.pose",
                   "--progress", "json",
                   check=0)
    import json

    events = [json.loads(line) for line in proc.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    values = [e["value"] for e in events if e["event"] == "progress" and e["value"] is not None]
    assert values == sorted(values) and values[-1] == 1.0
    assert proc.stdout == ""


def _make_no_face_image(path):
    from PIL import Image

    x = np.linspace(0, 255, 256, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(x, (256, 1))] * 3, -1)).save(path)


def _make_video(path, seconds: float, frames: int | None = None, size=64):
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc=s={size}x{size}:d={seconds}"]
    if frames is not None:
        cmd += ["-frames:v", str(frames)]
    subprocess.run(cmd + ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)


def _index_at_the_end(src, dest):
    """`src` remuxed the way most cameras write: the index (moov) after the data, so a cut-off copy has none."""
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(src), "-c", "copy", "-movflags", "-faststart", str(dest)],
                   check=True)
    return dest


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    truncated = tmp_path / "truncated.mp4"
    whole = _index_at_the_end(media("liveportrait_d0.mp4", fallback=driving_video), tmp_path / "whole.mp4")
    truncated.write_bytes(whole.read_bytes()[: min(200_000, whole.stat().st_size // 2)])
    noface = tmp_path / "gradient.png"
    _make_no_face_image(noface)
    zero = tmp_path / "zero.mp4"
    _make_video(zero, 1, frames=0)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noface_video = tmp_path / "testsrc.mp4"
    _make_video(noface_video, 1, size=128)
    return {
        "missing": (tmp_path / "missing.mp4", "not found"),
        "text": (text, "not a video"),
        "truncated": (truncated, "truncated"),
        "noface-image": (noface, "no face"),
        "zero-length": (zero, "no video stream"),
        "empty": (empty, "empty"),
        "noface-video": (noface_video, "no face"),
    }


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path):
    for name, (path, words) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name}.pose"
        proc = run_a2p("extract-pose", path, "-o", out)
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr)
        assert words in lines[0].lower() and path.name in lines[0], (name, lines[0])
        assert "Traceback" not in proc.stderr
        assert not out.exists() and not list(tmp_path.glob(".*part*")), name


def test_unwritable_output_directory(tmp_path):
    img = media("liveportrait_s12.jpg", fallback=EXAMPLE_PORTRAIT)
    proc = run_a2p("extract-pose", img, "-o", tmp_path / "no" / "such" / "dir" / "x.pose")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_a2p("extract-pose", img, "-o", "/proc/x.pose")  # a filesystem nobody can write, root included
    assert proc.returncode == 2 and "not writable" in proc.stderr


def test_batch_goes_on_after_a_bad_input_and_fails_at_the_end(tmp_path):
    good = tmp_path / "good.jpg"
    shutil.copy(media("liveportrait_s12.jpg", fallback=EXAMPLE_PORTRAIT), good)
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = run_a2p("extract-pose", bad, good, "-o", outdir)
    assert proc.returncode == 2 and "bad.mp4" in proc.stderr
    assert [p.name for p in outdir.iterdir()] == ["good.pose"]


def test_unknown_pose_version_and_corrupt_pose(tmp_path, d3_pose):
    from a2pcli.errors import InputError

    out, _ = d3_pose
    with np.load(out) as z:
        data = {k: z[k] for k in z.files}
    data["version"] = np.array(99, np.int32)
    newer = tmp_path / "newer.pose"
    with open(newer, "wb") as f:
        np.savez(f, **data)
    with pytest.raises(InputError, match="version 99"):
        load_pose(newer)
    corrupt = tmp_path / "corrupt.pose"
    corrupt.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(InputError, match="not a readable .pose"):
        load_pose(corrupt)
