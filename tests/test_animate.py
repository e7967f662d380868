"""pose2vid and vid2vid end to end: real MediaPipe, real renderer, real ffmpeg; what a user checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from a2pcli.cli.app import main
from tests.conftest import EXAMPLE_PORTRAIT, driving_video, ffmpeg_exe, media, second_portrait

EXIT_BAD_INPUT = 2


def happy() -> Path:
    """A photo portrait: the shared sample, or the repository's example without ../shared."""
    return media("sadtalker_happy.png", fallback=EXAMPLE_PORTRAIT)


def s9() -> Path:
    """A second portrait: the shared sample, or the example mirrored without ../shared."""
    return media("liveportrait_s9.jpg", fallback=second_portrait)


def a2p(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def run_ok(capsys, *args) -> dict:
    """Run a command that makes one output; its --json result."""
    code, out, err = a2p(capsys, *args, "--json", "-q")
    assert code == 0, err
    s = json.loads(out)
    assert not s["failed"] and len(s["outputs"]) == 1, s
    return s["outputs"][0]


def read_video(path: Path) -> tuple[np.ndarray, dict]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])
    return frames, meta


def streams(path: Path) -> str:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return proc.stderr


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    from a2pcli.encode import VideoWriter

    with VideoWriter(path, (frames.shape[2], frames.shape[1]), fps) as w:
        w.write_batch(frames)
    return path


@pytest.fixture(scope="module")
def d3_pose(tmp_path_factory) -> Path:
    """The first 1.2 s of liveportrait_d3 (head turns, mouth opens) as a .pose."""
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.motion import save_pose

    motion, _ = extract_motion(media("liveportrait_d3.mp4", fallback=driving_video), ExtractOptions(end=1.2))
    path = tmp_path_factory.mktemp("motion") / "d3.pose"
    save_pose(motion, path)
    return path


@pytest.fixture(scope="module")
def d0_frames() -> np.ndarray:
    from a2pcli.media import probe_video, stream_frames

    info = probe_video(media("liveportrait_d0.mp4", fallback=driving_video))
    return np.stack([f.copy() for f, _ in zip(stream_frames(info), range(20))])


def face_box(image: np.ndarray) -> tuple[int, int, int, int]:
    from a2pcli.landmarks import bbox, detect_image

    x0, y0, x1, y1 = bbox(detect_image(image)[0]).astype(int)
    return x0, y0, x1, y1


def test_pose2vid_moves_the_face_and_keeps_the_background(capsys, tmp_path, d3_pose):
    out = tmp_path / "out.mp4"
    s = run_ok(capsys, "pose2vid", happy(), d3_pose, "--crop", "--size", "256", "-o", out)
    frames, meta = read_video(out)
    assert s["frames"] == len(frames) == 36 and s["size"] == [256, 256] and frames.shape[1:3] == (256, 256)
    assert abs(meta["fps"] - 30) < 0.01 and "h264" in streams(out) and "yuv420p" in streams(out)
    x0, y0, x1, y1 = face_box(frames[0])
    face = frames[:, y0:y1, x0:x1].astype(np.float32)
    assert np.abs(face - face[:1]).mean(axis=(1, 2, 3)).max() > 4, "the face did not move"
    corner = frames[:, :12, :12].astype(np.float32)
    assert np.abs(corner - corner[:1]).max() < 12, "the background far from the face moved"


def test_pose2vid_with_aniportrait_template_and_audio(capsys, tmp_path):
    import soundfile as sf

    t = np.arange(45)
    template = np.zeros((45, 6), np.float32)
    template[:, 1] = 12 * np.sin(t / 45 * 2 * np.pi)  # yaw, degrees
    np.save(tmp_path / "template.npy", template)
    sf.write(tmp_path / "speech.wav", (0.1 * np.sin(np.arange(16000) * 0.05)).astype(np.float32), 16000)  # 1 s
    out = tmp_path / "t.mp4"
    s = run_ok(capsys, "pose2vid", s9(), tmp_path / "template.npy", "--audio",
               tmp_path / "speech.wav", "--crop", "--size", "192", "-o", out)
    assert s["frames"] == 30 and any("shorter" in n for n in s["notes"]), s  # 1 s of audio cuts 1.5 s of motion
    assert "aac" in streams(out)
    frames, _ = read_video(out)
    assert len(frames) == 30
    assert np.abs(frames[15].astype(np.float32) - frames[0]).mean() > 2, "the template did not turn the head"


def test_pose2vid_audio_longer_than_motion(capsys, tmp_path, d3_pose):
    import soundfile as sf

    sf.write(tmp_path / "long.wav", np.zeros(16000 * 3, np.float32) + 0.01, 16000)
    s = run_ok(capsys, "pose2vid", happy(), d3_pose, "--audio", tmp_path / "long.wav", "--crop",
               "--size", "128", "-o", tmp_path / "l.mp4")
    assert s["frames"] == 36 and any("longer" in n for n in s["notes"]), s


def test_vid2vid_keeps_the_driving_audio(capsys, tmp_path):
    driving = media("sadtalker_WDA_KatieHill_000.mp4", fallback=driving_video)
    cut = tmp_path / "katie.mp4"  # 1 s of it keeps the test short
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(driving), "-t", "1", "-c:v", "libx264", "-c:a", "aac",
                    str(cut)], check=True)
    out = tmp_path / "v.mp4"
    s = run_ok(capsys, "vid2vid", happy(), cut, "--crop", "--size", "160", "-o", out)
    assert s["frames"] >= 20 and "aac" in streams(out)


def test_vid2vid_without_audio_and_late_face(capsys, tmp_path, d0_frames):
    """A driving video with no audio stream whose first frames show no face."""
    blank = np.full((6, *d0_frames.shape[1:]), 90, np.uint8)
    driving = write_video(tmp_path / "late.mp4", np.concatenate([blank, d0_frames[:10]]))
    out = tmp_path / "late_out.mp4"
    s = run_ok(capsys, "vid2vid", s9(), driving, "--crop", "--size", "128", "-o", out)
    assert "Audio" not in streams(out)
    assert any("first 6 frames have no face" in n for n in s["notes"]), s["notes"]
    assert s["frames"] == 10


def test_vid2vid_one_frame_driving_video(capsys, tmp_path, d0_frames):
    driving = write_video(tmp_path / "one.mp4", d0_frames[:1])
    s = run_ok(capsys, "vid2vid", happy(), driving, "--crop", "--size", "128",
               "-o", tmp_path / "one_out.mp4")
    assert s["frames"] == 1


def test_frames_dir_and_meta(capsys, tmp_path, d3_pose):
    out = tmp_path / "m.mp4"
    run_ok(capsys, "pose2vid", happy(), d3_pose, "--crop", "--size", "128", "-o", out,
           "--frames-dir", tmp_path / "frames", "--meta")
    assert len(list((tmp_path / "frames").glob("*.png"))) == 36
    meta = json.loads((tmp_path / "m.mp4.json").read_text())
    assert meta["options"]["portrait"]["crop"] is True and len(meta["inputs"]) == 2
    assert all(len(i["sha256"]) == 64 for i in meta["inputs"]) and meta["versions"]["a2p"]


@pytest.mark.parametrize("variant", ["gray", "rgba", "exif-rotated", "4k"])
def test_awkward_portraits(capsys, tmp_path, d3_pose, variant):
    from PIL import Image

    im = Image.open(happy()).convert("RGB")
    path = tmp_path / f"{variant}.png"
    if variant == "gray":
        im.convert("L").save(path)
    elif variant == "rgba":
        im.convert("RGBA").save(path)
    elif variant == "exif-rotated":
        path = tmp_path / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: the stored pixels are rotated; viewers turn them upright
        im.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    else:
        im.resize((3840, 2160)).save(path)
    s = run_ok(capsys, "pose2vid", path, d3_pose, "-o", tmp_path / "a.mp4", "--max-size", "512")
    assert s["frames"] == 36 and max(s["size"]) <= 512 and all(v % 2 == 0 for v in s["size"])


def test_small_face_in_a_large_image(capsys, tmp_path, d3_pose):
    s = run_ok(capsys, "pose2vid", media("sadtalker_full_body_1.png"), d3_pose, "-o", tmp_path / "f.mp4",
               "--max-size", "768")
    assert s["frames"] == 36


def test_several_faces_warn_and_face_index(capsys, tmp_path, d3_pose):
    from PIL import Image

    face = Image.open(happy()).convert("RGB")
    two = Image.new("RGB", (512, 300), (128, 128, 128))
    two.paste(face.resize((280, 280)), (0, 10))
    two.paste(face.resize((220, 220)), (282, 20))
    two.save(tmp_path / "two.png")
    s = run_ok(capsys, "pose2vid", tmp_path / "two.png", d3_pose, "-o", tmp_path / "two.mp4")
    assert any("2 faces" in n for n in s["notes"]), s["notes"]
    code, _, err = a2p(capsys, "pose2vid", tmp_path / "two.png", d3_pose, "-o", tmp_path / "x.mp4", "--face-index", "5")
    assert code == EXIT_BAD_INPUT and "--face-index" in err and not (tmp_path / "x.mp4").exists()


# ---- bad inputs: a clear error, a non-zero exit, nothing written ---------------------------------------------------

def _fails(capsys, tmp_path, *args, named: str) -> str:
    out = tmp_path / "bad.mp4"
    code, stdout, err = a2p(capsys, *args, "-o", out)
    assert code == EXIT_BAD_INPUT, err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".bad*")), "partial output left behind"
    return err


def test_pose_of_unknown_version(capsys, tmp_path, d3_pose):
    with np.load(d3_pose) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["version"] = np.array(99, np.int32)
    with open(tmp_path / "future.pose", "wb") as f:
        np.savez(f, **arrays)
    err = _fails(capsys, tmp_path, "pose2vid", happy(), tmp_path / "future.pose",
                 named="future.pose")
    assert "version 99" in err


def test_corrupt_pose(capsys, tmp_path, d3_pose):
    (tmp_path / "cut.pose").write_bytes(d3_pose.read_bytes()[:5000])
    _fails(capsys, tmp_path, "pose2vid", happy(), tmp_path / "cut.pose", named="cut.pose")


def test_driving_video_without_a_face(capsys, tmp_path):
    rng = np.random.default_rng(0)
    noise = write_video(tmp_path / "noise.mp4", rng.integers(0, 255, (8, 128, 128, 3), dtype=np.uint8))
    err = _fails(capsys, tmp_path, "vid2vid", happy(), noise, named="noise.mp4")
    assert "face" in err


def test_portrait_without_a_face(capsys, tmp_path, d3_pose):
    from PIL import Image

    Image.new("RGB", (256, 256), (200, 180, 160)).save(tmp_path / "wall.png")
    _fails(capsys, tmp_path, "pose2vid", tmp_path / "wall.png", d3_pose, named="wall.png")


def test_output_in_missing_directory(capsys, tmp_path, d3_pose):
    code, _, err = a2p(capsys, "pose2vid", happy(), d3_pose, "-o", tmp_path / "nope" / "o.mp4")
    assert code == EXIT_BAD_INPUT and "nope" in err and not (tmp_path / "nope").exists()
