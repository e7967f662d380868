"""Every command against bad input: the exit code of the README's table (2 for bad input and usage), exactly one
`error:` line naming the input or the flag at fault, no traceback, no output left behind, every input unchanged.
Numbers out of range are refused when the job is made, before any work, the same from the command line, a
manifest line and the Python API; loaded arrays (.pose, .npy, speech, portraits) are checked when read. Runs
in-process on the repository's own examples and files made here; a full disk is a small tmpfs (root only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from a2pcli.cli.app import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXIT_BAD_INPUT, EXIT_MODEL = 2, 4
POSE_FRAMES = 10


def a2p(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process through its error boundary: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# --- the inputs --------------------------------------------------------------------------------------------------


def _pose_arrays() -> dict:
    """A valid .pose's arrays: a face that turns a little over POSE_FRAMES frames."""
    from a2pcli.headpose import load_reference, matrix_from_euler

    ref = load_reference().mean.astype(np.float32)
    t = POSE_FRAMES
    euler = np.zeros((t, 3), np.float32)
    euler[:, 0] = np.linspace(0, 6, t)
    rotation = matrix_from_euler(euler).astype(np.float32)
    scale = np.full(t, 60.0, np.float32)
    translation = np.tile(np.array([256.0, 256.0, 0.0], np.float32), (t, 1))
    landmarks = scale[:, None, None] * ref[None] @ rotation.transpose(0, 2, 1) + translation[:, None]
    return {"format": np.array("a2p.pose"), "version": np.array(1, np.int32), "fps": np.array(25.0),
            "frame_size": np.array([512, 512], np.int32), "euler": euler, "meta": np.array("{}"),
            "landmarks": landmarks.astype(np.float32), "valid": np.ones(t, bool), "filled": np.zeros(t, bool),
            "rotation": rotation, "translation": translation, "scale": scale,
            "expression": np.zeros((t, 478, 3), np.float32), "reference": ref}


def _write_pose(path: Path, **changes) -> None:
    arrays = _pose_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _write_speech(path: Path, seconds: float) -> None:
    from a2pcli.audio import load_audio, write_wav

    write_wav(path, load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5, duration_s=seconds))


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Every input of the matrix, good and bad, made once."""
    import cv2

    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(EXAMPLES / "astronaut.jpg", folder / "face.jpg")
    shutil.copy(EXAMPLES / "head_motion.npy", folder / "template.npy")
    _write_speech(folder / "speech.wav", 0.6)
    _write_speech(folder / "short.wav", 0.1)  # audio2motion broke on this
    _write_speech(folder / "almost.wav", 0.47)  # just under the documented 0.5 s
    _write_speech(folder / "long.wav", 2.0)
    with wave.open(str(folder / "long.wav")) as w:  # a header for 2 s, 0.09 s of samples: a cut download
        header = (folder / "long.wav").stat().st_size - w.getnframes() * 2
    (folder / "truncated.wav").write_bytes((folder / "long.wav").read_bytes()[: header + int(0.09 * 16000) * 2])
    (folder / "long.wav").unlink()
    face = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    cv2.imwrite(str(folder / "tiny.png"), cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA))  # eyes 5 px apart
    cv2.imwrite(str(folder / "noface.png"), np.full((128, 128, 3), 90, np.uint8))
    (folder / "notes.txt").write_text("a file, not a folder\n")
    (folder / "clips").mkdir()
    (folder / "badmouth").mkdir()  # a mouth model folder whose files are not a model
    (folder / "badmouth" / "config.json").write_text("{}")
    (folder / "badmouth" / "model.safetensors").write_bytes(b"not a model")

    pose = _pose_arrays()
    _write_pose(folder / "motion.pose")
    _write_pose(folder / "nan.pose", landmarks=_set(pose["landmarks"], (3, 5, 0), np.nan))
    _write_pose(folder / "inf.pose", translation=_set(pose["translation"], (7, 1), np.inf))
    _write_pose(folder / "shape.pose", landmarks=pose["landmarks"][:, :100], expression=pose["expression"][:, :100])
    _write_pose(folder / "huge.pose", translation=_set(pose["translation"], (0, 0), 1e30))
    _write_pose(folder / "empty.pose", **{k: pose[k][:0] for k in ("landmarks", "valid", "filled", "rotation",
                                                                  "translation", "scale", "expression", "euler")})
    _write_pose(folder / "text.pose", scale=pose["scale"].astype("U8"))
    _write_pose(folder / "norotation.pose", rotation=None)
    _write_pose(folder / "badfps.pose", fps=np.array(math.nan))
    template = np.load(EXAMPLES / "head_motion.npy")
    np.save(folder / "nan.npy", _set(template, (4, 1), np.nan))
    np.save(folder / "huge.npy", template * 1e6)
    np.save(folder / "text.npy", template.astype("U10"))
    return folder


def _set(array: np.ndarray, index: tuple, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


# --- the matrix ---------------------------------------------------------------------------------------------------

A2V = ("audio2video", "face.jpg", "speech.wav", "-o", "out.mp4")
V2V = ("vid2vid", "face.jpg", "motion.pose", "-o", "out.mp4")
P2V = ("pose2vid", "face.jpg", "motion.pose", "-o", "out.mp4")
XP = ("extract-pose", "face.jpg", "-o", "out.pose")
TRAIN = ("train", "audio2motion", "--data", "clips", "-o", "model", "--preset", "tiny")
ALL = ("train", "all", "--data", "clips", "-o", "models", "--preset", "tiny")

# (argv, what the error line names, exit code)
CASES = [
    # numbers, checked when the job is made: audio2video
    ((*A2V, "--seed", "-1"), "--seed", 2),
    ((*A2V, "--seed", str(2**32)), "--seed", 2),
    ((*A2V, "--pose-scale", "inf"), "--pose-scale", 2),
    ((*A2V, "--pose-scale", "nan"), "--pose-scale", 2),
    ((*A2V, "--expression-scale", "1e6"), "--expression-scale", 2),
    ((*A2V, "--blink-rate", "1e9"), "--blink-rate", 2),
    ((*A2V, "--fps", "100000"), "--fps", 2),
    ((*A2V, "--fps", "0"), "--fps", 2),
    ((*A2V, "--crf", "99"), "--crf", 2),
    ((*A2V, "--size", "256"), "--size", 2),  # without --crop it would be ignored
    ((*A2V, "--crop", "--size", "100000"), "--size", 2),
    ((*A2V, "--max-size", "10"), "--max-size", 2),
    ((*A2V, "--batch-size", "0"), "--batch-size", 2),
    ((*A2V, "--batch-size", "100000"), "--batch-size", 2),
    ((*A2V, "--renderer", "aniportrait", "--steps", "100000"), "--steps", 2),
    ((*A2V, "--renderer", "aniportrait", "--cfg", "nan"), "--cfg", 2),
    ((*A2V, "--renderer", "aniportrait", "--acc", "1000"), "--acc", 2),
    # the embedded renderer's mouth model
    ((*A2V, "--mouth-model", "nosuch"), "nosuch", EXIT_MODEL),
    ((*A2V, "--renderer", "aniportrait", "--mouth-model", "badmouth"), "--mouth-model", 2),
    ((*P2V, "--mouth-model", "badmouth"), "a2p models verify", EXIT_MODEL),
    # audio2video's files
    ((*A2V, "--pose", "nan.pose"), "nan.pose", 2),
    ((*A2V, "--pose", "nan.npy"), "nan.npy", 2),
    (("audio2video", "face.jpg", "short.wav", "-o", "out.mp4"), "short.wav", 2),
    (("audio2video", "face.jpg", "almost.wav", "-o", "out.mp4"), "almost.wav", 2),
    (("audio2video", "face.jpg", "truncated.wav", "-o", "out.mp4"), "truncated.wav", 2),
    (("audio2video", "noface.png", "short.wav", "-o", "out.mp4"), "noface.png", 2),  # the first problem first
    (("audio2video", "tiny.png", "speech.wav", "-o", "out.mp4"), "tiny.png", 2),
    ((*A2V, "--frames-dir", "notes.txt"), "notes.txt", 2),
    (("audio2video", "face.jpg", "speech.wav", "-o", "speech.wav", "--overwrite"), "speech.wav", 2),
    (("audio2video", "face.jpg", "missing.wav", "-o", "out.mp4"), "missing.wav", 2),
    # vid2vid given a .pose, and its numbers
    (("vid2vid", "face.jpg", "nan.pose", "-o", "out.mp4"), "nan.pose", 2),
    (("vid2vid", "face.jpg", "shape.pose", "-o", "out.mp4"), "shape.pose", 2),
    ((*V2V, "--ref-frame", "-1"), "--ref-frame", 2),
    ((*V2V, "--ref-frame", str(POSE_FRAMES)), "--ref-frame", 2),  # past the motion's last frame
    ((*V2V, "--face-index", "-1"), "--face-index", 2),
    ((*V2V, "--seed", "-1"), "--seed", 2),
    (("vid2vid", "tiny.png", "motion.pose", "-o", "out.mp4"), "tiny.png", 2),
    (("vid2vid", "face.jpg", "motion.pose", "-o", "motion.pose", "--overwrite"), "motion.pose", 2),
    # pose2vid: every kind of bad motion file
    *[(("pose2vid", "face.jpg", name, "-o", "out.mp4"), name, 2) for name in (
        "nan.pose", "inf.pose", "shape.pose", "huge.pose", "empty.pose", "text.pose", "norotation.pose",
        "badfps.pose", "nan.npy", "huge.npy", "text.npy", "notes.txt", "missing.pose")],
    ((*P2V, "--fps", "100000"), "--fps", 2),
    ((*P2V, "--pose-scale", "-1"), "--pose-scale", 2),
    ((*P2V, "--audio", "missing.wav"), "missing.wav", 2),
    ((*P2V, "--frames-dir", "notes.txt"), "notes.txt", 2),
    ((*P2V, "--split", "cfg"), "--split", 2),  # an option of the diffusion renderer
    # extract-pose
    ((*XP, "--fps", "100000"), "--fps", 2),
    ((*XP, "--fps", "0"), "--fps", 2),
    ((*XP, "--smooth", "nan"), "--smooth", 2),
    ((*XP, "--max-gap", "-1"), "--max-gap", 2),
    ((*XP, "--start", "-1"), "--start", 2),
    ((*XP, "--start", "inf"), "--start", 2),
    ((*XP, "--start", "2", "--end", "1"), "--end", 2),
    (("extract-pose", "missing.mp4", "-o", "out.pose"), "missing.mp4", 2),
    (("extract-pose", "noface.png", "-o", "out.pose"), "noface.png", 2),
    (("extract-pose", "face.jpg", "-o", "face.jpg", "--overwrite"), "face.jpg", 2),
    # train audio2motion and train all
    (("train", "audio2motion", "--data", "missing", "-o", "model"), "missing", 2),
    (("train", "audio2motion", "--data", "notes.txt", "-o", "model"), "notes.txt", 2),
    ((*TRAIN, "--lr", "nan"), "--lr", 2),
    ((*TRAIN, "--epochs", "0"), "--epochs", 2),
    ((*TRAIN, "--batch-size", "-1"), "--batch-size", 2),
    ((*TRAIN, "--seed", "-1"), "--seed", 2),
    ((*TRAIN, "--resume", "missing.pt"), "missing.pt", 2),
    (("train", "mouth", "--data", "missing", "-o", "model"), "missing", 2),
    (("train", "mouth", "--data", "clips", "-o", "model", "--batch-size", "0"), "--batch-size", 2),
    (("train", "mouth", "--data", "clips", "-o", "model", "--poses", "missing"), "missing", 2),
    (("train", "all", "--data", "missing", "-o", "models"), "missing", 2),
    ((*ALL, "--seed", "-1"), "--seed", 2),
    ((*ALL, "--only", "nosuch"), "--only", 2),
    # models and doctor
    (("models", "verify", "nosuch"), "nosuch", EXIT_MODEL),
    (("models", "pull", "nosuch"), "nosuch", EXIT_MODEL),
    (("doctor", "--output-dir", "notes.txt"), "notes.txt", 2),
    (("doctor", "--device", "cuda:x"), "--device", 2),  # doctor checks every device: it takes no --device
    # usage: what click refuses before a job is made
    ((*P2V, "--fps", "abc"), "--fps", 2),
    ((*A2V, "--loudness", "3"), "--loudness", 2),
    ((*P2V, "--renderer", "aniportrait", "--split", "rows"), "--split", 2),
    (("vid2vid", "face.jpg"), "DRIVING", 2),
]

MANIFESTS = {  # one bad line each (and a good job that must not run before it is checked)
    "not json": "{not json",
    "unknown command": {"command": "lipsync", "portrait": "face.jpg"},
    "missing input": {"command": "audio2video", "portrait": "face.jpg"},
    "unknown option": {"command": "pose2vid", "portrait": "face.jpg", "motion": "motion.pose", "loudness": 3},
    "fps out of range": {"command": "audio2video", "portrait": "face.jpg", "audio": "speech.wav", "fps": 100000},
    "seed out of range": {"command": "vid2vid", "portrait": "face.jpg", "driving": "motion.pose", "seed": -1},
    "nan smoothing": {"command": "extract-pose", "video": "face.jpg", "smooth": "nan"},
    "size without crop": {"command": "pose2vid", "portrait": "face.jpg", "motion": "motion.pose", "size": 256},
    "bad motion file": {"command": "pose2vid", "portrait": "face.jpg", "motion": "nan.pose"},
    "short speech": {"command": "audio2video", "portrait": "face.jpg", "audio": "short.wav"},
    "split in a manifest": {"command": "pose2vid", "portrait": "face.jpg", "motion": "motion.pose",
                            "renderer": "aniportrait", "split": "cfg"},  # a batch gives each job one process
}
MANIFEST_NAMES = {"not json": "not JSON", "unknown command": "lipsync", "missing input": "'audio'",
                  "unknown option": "loudness", "fps out of range": "--fps", "seed out of range": "--seed",
                  "nan smoothing": "--smooth", "size without crop": "--size", "bad motion file": "nan.pose",
                  "short speech": "short.wav", "split in a manifest": "split"}


def _fingerprint(folder: Path, leave_out: str = "") -> dict[str, str]:
    """Every file's sha256 and every folder under `folder`, by name (but `leave_out`)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*")) if not leave_out or p.relative_to(folder).parts[0] != leave_out}


def _check_failure(code: int, err: str, expected_code: int, named: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == expected_code, err
    assert len(lines) == 1, err
    assert named in lines[0], err
    assert "Traceback" not in err and "unexpected" not in err, err


@pytest.mark.parametrize("argv,named,code", CASES, ids=[" ".join(a) for a, _, _ in CASES])
def test_a_bad_input_exits_with_one_error_line_that_names_it_and_leaves_everything_as_it_was(
        capsys, monkeypatch, tmp_path, made, argv, named, code):
    work = tmp_path / "work"
    shutil.copytree(made, work)
    monkeypatch.chdir(work)
    before = _fingerprint(work)
    got, _, err = a2p(capsys, *argv, *(("--progress", "none") if argv[0] not in ("models", "doctor") else ()))
    _check_failure(got, err, code, named)
    assert _fingerprint(work) == before  # no output (nor a temporary, a model folder), every input as it was


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_a_bad_manifest_line_is_reported_and_nothing_is_made(capsys, monkeypatch, tmp_path, made, case):
    work = tmp_path / "work"
    shutil.copytree(made, work)
    monkeypatch.chdir(work)
    line = MANIFESTS[case]
    (work / "jobs.jsonl").write_text(line + "\n" if isinstance(line, str) else json.dumps(line) + "\n")
    before = _fingerprint(work)
    code, _, err = a2p(capsys, "batch", "jobs.jsonl", "-o", "renders", "--progress", "none")
    _check_failure(code, err, EXIT_BAD_INPUT, MANIFEST_NAMES[case])
    assert _fingerprint(work, leave_out="renders") == before  # the inputs as they were
    assert [p.name for p in (work / "renders").iterdir()] == ["jobs.results.jsonl"]  # the results, nothing else
    record = json.loads((work / "renders" / "jobs.results.jsonl").read_text())
    assert record["line"] == 1 and record["status"] == "failed" and record["exit_code"] == EXIT_BAD_INPUT
    assert MANIFEST_NAMES[case] in record["error"]


# --- the same checks from the Python API --------------------------------------------------------------------------


def test_the_api_refuses_the_numbers_the_command_line_refuses_when_the_job_is_made():
    from a2pcli import DriveJob, ExtractJob, ExtractOptions, PortraitOptions, RetargetOptions, TalkJob, TalkOptions
    from a2pcli.errors import InputError

    bad = {"--seed": lambda: TalkJob(seed=-1), "--fps": lambda: TalkJob(fps=100000),
           "--pose-scale": lambda: DriveJob(retarget=RetargetOptions(pose_scale=math.inf)),
           "--expression-scale": lambda: TalkJob(talk=TalkOptions(expression_scale=1e6)),
           "--blink-rate": lambda: TalkJob(talk=TalkOptions(blink_rate=1e9)),
           "--max-size": lambda: DriveJob(portrait=PortraitOptions(max_size=10)),
           "--smooth": lambda: ExtractJob(ExtractOptions(smooth=math.nan)),
           "--max-gap": lambda: ExtractJob(ExtractOptions(max_gap_s=-1))}
    for flag, make in bad.items():
        with pytest.raises(InputError) as exc:
            make()
        assert exc.value.one_line().startswith(f"{flag}: must be ") and exc.value.exit_code == EXIT_BAD_INPUT
    # the edges of every range are accepted
    TalkJob(seed=2**32 - 1, fps=120, talk=TalkOptions(pose_scale=3, expression_scale=0, blink_rate=60))
    DriveJob(fps=None, portrait=PortraitOptions(crop=True, size=4096, max_size=64))
    ExtractJob(ExtractOptions(fps=1, smooth=25, max_gap_s=0, start=0, end=86400))


def test_a_motion_given_to_the_api_is_checked_like_a_file(tmp_path):
    from a2pcli import DriveJob, pose2vid
    from a2pcli.errors import InputError
    from a2pcli.motion import load_motion

    _write_pose(tmp_path / "motion.pose")
    motion = load_motion(tmp_path / "motion.pose")
    motion.translation[2, 0] = np.nan
    with pytest.raises(InputError, match="translation holds NaN") as exc:
        pose2vid(EXAMPLES / "astronaut.jpg", motion, tmp_path / "out.mp4", DriveJob())
    assert exc.value.subject == "the driving motion"
    assert not (tmp_path / "out.mp4").exists()


def test_speech_given_as_samples_must_be_finite_and_at_least_half_a_second(tmp_path):
    from a2pcli import TalkJob, audio2video
    from a2pcli.audio import load_audio
    from a2pcli.errors import InputError

    samples = load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5, duration_s=0.6)
    with pytest.raises(InputError, match="NaN"):
        audio2video(EXAMPLES / "astronaut.jpg", _set(samples, (100,), np.nan), tmp_path / "a.mp4", TalkJob())
    with pytest.raises(InputError, match=r"holds 0\.40 s of audio, less than the 0\.5 s"):
        audio2video(EXAMPLES / "astronaut.jpg", samples[:6400], tmp_path / "b.mp4", TalkJob())
    assert not list(tmp_path.iterdir())


def test_half_a_second_of_speech_is_enough(tmp_path):
    from a2pcli.audio import load_audio
    from a2pcli.pipeline.talking import talk_motion

    samples = load_audio(EXAMPLES / "speech.flac", 16000, start_s=0.5, duration_s=0.5)
    _, targets, _ = talk_motion(EXAMPLES / "astronaut.jpg", samples)
    assert len(targets) == 12 and np.isfinite(targets.landmarks).all()  # 0.5 s at 25 fps


def test_a_small_face_is_animated_with_a_note_and_a_tiny_one_is_refused_naming_the_minimum(tmp_path):
    import cv2

    from a2pcli.errors import InputError
    from a2pcli.pipeline.portrait import MIN_FACE_PX, PortraitOptions, load_portrait

    face = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    for side in (48, 96):
        cv2.imwrite(str(tmp_path / f"{side}.png"), cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA))
    with pytest.raises(InputError, match=f"at least {MIN_FACE_PX:g} px") as exc:
        load_portrait(tmp_path / "48.png", PortraitOptions(crop=True, size=256))  # upscaled, it would be a blur
    assert exc.value.subject == str(tmp_path / "48.png")
    portrait = load_portrait(tmp_path / "96.png")
    assert any("the face is small" in note for note in portrait.notes)
    assert not load_portrait(EXAMPLES / "astronaut.jpg").notes  # a real portrait: no note
    with pytest.raises(InputError, match="in the video") as exc:  # --max-size would shrink it below the minimum
        load_portrait(EXAMPLES / "astronaut.jpg", PortraitOptions(max_size=64))
    assert "Raise --max-size, or add --crop" in exc.value.one_line()


# --- a full disk -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_disk(folder: Path, size_bytes: int):
    """A tmpfs of `size_bytes` mounted on `folder` (root only; skips where mounting is not allowed)."""
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    pages = max(1, size_bytes // 4096)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4}k", "tmpfs", str(folder)], check=False,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_extract_pose_onto_a_full_disk_names_the_output_in_one_line(capsys, tmp_path):
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "face.jpg")
    with _small_disk(tmp_path / "disk", 16 * 1024) as disk:  # a one-frame .pose takes 22 kB
        code, _, err = a2p(capsys, "extract-pose", tmp_path / "face.jpg", "-o", disk / "face.pose", "--progress",
                           "none")
        left = list(disk.iterdir())
    _check_failure(code, err, EXIT_BAD_INPUT, str(tmp_path / "disk" / "face.pose"))
    assert "no space left on device" in err and "Exception ignored" not in err
    assert not left


def test_audio2video_onto_a_full_disk_names_the_output_not_the_audio(capsys, tmp_path):
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "face.jpg")
    _write_speech(tmp_path / "speech.wav", 1.0)
    args = ("--crop", "--size", "64", "--progress", "none")
    code, _, err = a2p(capsys, "audio2video", tmp_path / "face.jpg", tmp_path / "speech.wav", "-o",
                       tmp_path / "room.mp4", *args)
    assert code == 0, err
    # room for the video alone, not for the final file written beside it: adding the audio meets the full disk
    with _small_disk(tmp_path / "disk", (tmp_path / "room.mp4").stat().st_size) as disk:
        code, _, err = a2p(capsys, "audio2video", tmp_path / "face.jpg", tmp_path / "speech.wav", "-o",
                           disk / "talk.mp4", *args)
        left = list(disk.iterdir())
    _check_failure(code, err, EXIT_BAD_INPUT, str(tmp_path / "disk" / "talk.mp4"))
    assert "no space left on device" in err and "speech.wav" not in err
    assert not left
