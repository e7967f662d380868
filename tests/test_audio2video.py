"""audio2video end to end on CPU with the shipped model: real audio decoding, real model, real renderer and
encoder; what a user checks (length, audio, the mouth moves with speech and rests in silence)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXAMPLE_PORTRAIT, EXAMPLE_SPEECH, ffmpeg_exe, media, second_portrait
from tests.test_animate import a2p, read_video, streams

EXIT_BAD_INPUT, EXIT_MODEL = 2, 4
SR = 16000
PORTRAIT_ARGS = ("--crop", "--size", "160")


def happy() -> Path:
    """A photo portrait: the shared sample, or the repository's example without ../shared."""
    return media("sadtalker_happy.png", fallback=EXAMPLE_PORTRAIT)


def s9() -> Path:
    """A second portrait: the shared sample, or the example mirrored without ../shared."""
    return media("liveportrait_s9.jpg", fallback=second_portrait)


def run_all(capsys, *args) -> dict:
    """audio2video's --json result: {"outputs": [...], "failed": [...]}."""
    code, out, err = a2p(capsys, "audio2video", *args, "--json", "-q")
    assert code == 0, err
    return json.loads(out)


def run_ok(capsys, *args) -> dict:
    """One video's --json result."""
    s = run_all(capsys, *args)
    assert not s["failed"] and len(s["outputs"]) == 1, s
    return s["outputs"][0]


def tone_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like audio: voiced syllables (harmonics, 4 per second) with pauses between them."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 8))
    syllables = (np.sin(2 * np.pi * 4 * t) > 0.1).astype(float)
    return (0.3 * voice * syllables + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    sf.write(path, audio, sr, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """2 s of real speech, then 1.5 s of silence."""
    from a2pcli.audio import load_audio

    speech = load_audio(media("sadtalker_RD_Radio31_000.wav", fallback=EXAMPLE_SPEECH), SR, start_s=1.0,
                        duration_s=2.0)
    audio = np.concatenate([speech, np.zeros(int(1.5 * SR), np.float32)])
    return write_wav(tmp_path_factory.mktemp("speech") / "speech_then_silence.wav", audio)


def mouth_series(video: Path) -> np.ndarray:
    from a2pcli.landmarks import FaceMeshDetector, mouth_opening

    frames, _ = read_video(video)
    with FaceMeshDetector(video=True) as det:
        return np.array([mouth_opening(det.detect(f)[0]) for f in frames])


def test_speech_moves_the_mouth_and_silence_closes_it(capsys, tmp_path, speech_wav):
    out = tmp_path / "talk.mp4"
    s = run_ok(capsys, happy(), speech_wav, *PORTRAIT_ARGS, "--size", "256", "-o", out)
    frames, meta = read_video(out)
    assert len(frames) == s["frames"] and abs(len(frames) / meta["fps"] - 3.5) <= 1 / meta["fps"] + 1e-6
    assert "aac" in streams(out)
    m = mouth_series(out)
    speaking, silent = m[: int(2 * 25)], m[int(2.4 * 25):]
    assert speaking.std() > 0.02 and speaking.max() > silent.max() + 0.03, (speaking, silent)
    assert silent.max() < np.percentile(speaking, 75), "the mouth did not rest in the silence"


@pytest.mark.parametrize("seconds", [0.5, 5.0, 10.0])
def test_any_length(capsys, tmp_path, seconds):
    wav = write_wav(tmp_path / f"s{seconds}.wav", tone_speech(seconds))
    out = tmp_path / "o.mp4"
    s = run_ok(capsys, s9(), wav, "--crop", "--size", "128", "-o", out)
    frames, meta = read_video(out)
    assert abs(len(frames) / meta["fps"] - seconds) <= 1 / meta["fps"] + 1e-6 and s["frames"] == len(frames)


def test_silence_only(capsys, tmp_path):
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(SR, np.float32))
    out = tmp_path / "q.mp4"
    run_ok(capsys, happy(), wav, *PORTRAIT_ARGS, "-o", out)
    assert mouth_series(out).max() < 0.08


def test_audio_formats(capsys, tmp_path):
    speech = tone_speech(1.0)
    stereo48 = write_wav(tmp_path / "s48.wav", np.stack([speech[::1]] * 2, 1).repeat(3, 0), 48000, "PCM_24")
    mp3 = tmp_path / "s.mp3"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(stereo48), "-c:a", "libmp3lame", str(mp3)], check=True)
    mp4 = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1", "-i", str(stereo48),
                    "-shortest", "-c:v", "libx264", "-c:a", "aac", str(mp4)], check=True)
    for src in (stereo48, mp3, mp4):
        s = run_ok(capsys, s9(), src, "--crop", "--size", "96", "-o", tmp_path / f"{src.stem}_out.mp4")
        assert 24 <= s["frames"] <= 26, (src, s["frames"])


def test_same_seed_same_video(capsys, tmp_path, speech_wav):
    digests = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.mp4"
        run_ok(capsys, happy(), speech_wav, *PORTRAIT_ARGS, "--seed", "7", "-o", out)
        digests.append(hashlib.sha256(read_video(out)[0].tobytes()).hexdigest())
    assert digests[0] == digests[1]


def test_batch_of_portraits(capsys, tmp_path, speech_wav):
    outdir = tmp_path / "outs"
    outdir.mkdir()
    s = run_all(capsys, happy(), s9(), speech_wav, *PORTRAIT_ARGS, "-o", outdir)
    assert len(s["outputs"]) == 2 and not s["failed"]
    assert sorted(p.name for p in outdir.iterdir()) == sorted(f"{p.stem}_speech_then_silence.mp4"
                                                              for p in (happy(), s9()))


def test_portraits_times_audio_files_in_one_run(capsys, tmp_path):
    """Every portrait speaks every audio file, one video each, each as long as its audio; a bad audio file is
    reported and the other pairs still render."""
    a = write_wav(tmp_path / "one.wav", tone_speech(1.0))
    b = write_wav(tmp_path / "two.wav", tone_speech(0.6, seed=1))
    (tmp_path / "bad.wav").write_text("not audio\n")
    outdir = tmp_path / "outs"
    outdir.mkdir()
    code, out, err = a2p(capsys, "audio2video", happy(), s9(), a,
                         tmp_path / "bad.wav", b, "--crop", "--size", "128", "-o", outdir, "--json")
    s = json.loads(out)
    assert code == EXIT_BAD_INPUT and "bad.wav" in err
    assert [(f["audio"], Path(f["input"]).name) for f in s["failed"]] == [
        (str(tmp_path / "bad.wav"), happy().name), (str(tmp_path / "bad.wav"), s9().name)]
    assert sorted(p.name for p in outdir.iterdir()) == sorted(f"{p.stem}_{a}.mp4" for p in (happy(), s9())
                                                              for a in ("one", "two"))
    for r in s["outputs"]:
        frames, meta = read_video(Path(r["output"]))
        seconds = 1.0 if r["audio"] == str(a) else 0.6
        assert abs(len(frames) / meta["fps"] - seconds) <= 1 / meta["fps"] + 1e-6, r


def test_several_audio_files_need_an_output_directory_and_images_come_first(capsys, tmp_path):
    a = write_wav(tmp_path / "one.wav", tone_speech(0.5))
    b = write_wav(tmp_path / "two.wav", tone_speech(0.5))
    code, _, err = a2p(capsys, "audio2video", happy(), a, b, "-o", tmp_path / "x.mp4")
    assert code == EXIT_BAD_INPUT and "-o must be an existing directory" in err
    code, _, err = a2p(capsys, "audio2video", happy(), a, s9(),
                       "-o", tmp_path)
    assert code == EXIT_BAD_INPUT and s9().name in err and "portraits come first" in err
    assert not list(tmp_path.glob("*.mp4"))


def test_template_and_still(capsys, tmp_path, speech_wav):
    template = np.zeros((20, 6), np.float32)
    template[:, 1] = np.linspace(0, 10, 20)
    np.save(tmp_path / "turn.npy", template)
    s = run_ok(capsys, happy(), speech_wav, *PORTRAIT_ARGS, "--pose", tmp_path / "turn.npy",
               "-o", tmp_path / "t.mp4")
    assert any("back and forth" in n for n in s["notes"]), s["notes"]
    run_ok(capsys, happy(), speech_wav, *PORTRAIT_ARGS, "--still", "-o", tmp_path / "still.mp4")


def test_text_file_named_wav(capsys, tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio\n")
    out = tmp_path / "x.mp4"
    code, _, err = a2p(capsys, "audio2video", happy(), tmp_path / "notes.wav", "-o", out)
    assert code == EXIT_BAD_INPUT and "notes.wav" in err and not out.exists()


def test_corrupt_model_file(capsys, tmp_path, speech_wav):
    from a2pcli import paths

    src = paths.shipped_models_dir() / "audio2motion"
    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in src.iterdir():
        data = f.read_bytes()
        if f.suffix == ".safetensors":
            data = data[: len(data) // 2]
        (bad / f.name).write_bytes(data)
    out = tmp_path / "x.mp4"
    code, _, err = a2p(capsys, "audio2video", happy(), speech_wav, "--model", bad, "-o", out)
    assert code == EXIT_MODEL and "model.safetensors" in err and "a2p models verify" in err, err
    assert not out.exists()
