"""a2pcli.encode against the real bundled ffmpeg: H.264 writing, audio muxing, probing and decoding."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from a2pcli.audio import AudioTrack, load_audio, probe_audio
from a2pcli.encode import VideoWriter
from a2pcli.errors import InputError, OutputError
from tests.conftest import ffmpeg_exe, media


def pattern(i: int, w: int, h: int) -> np.ndarray:
    """Frame i of a smooth moving pattern: gradients and a blob that travels, so encoders have work to do."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * (0.3 + 0.4 * np.sin(i / 7)), h * (0.5 + 0.3 * np.cos(i / 5))
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.15 * min(w, h)) ** 2))
    r = 128 + 100 * np.sin(xx / w * 6.28 + i / 10)
    g = 60 + 150 * yy / h
    b = 50 + 180 * blob
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def ffmpeg_info(path: Path) -> str:
    """What `ffmpeg -i` says about a file (it exits 1: no output given)."""
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def decode(path: Path) -> tuple[dict, list[np.ndarray]]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in gen]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def is_faststart(path: Path) -> bool:
    data = path.read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")


def write_wav(path: Path, seconds: float, rate: int = 44100, channels: int = 1, level: float = 0.5,
              subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    t = np.arange(int(round(seconds * rate))) / rate
    tone = level * np.sin(2 * np.pi * 440 * t)
    sf.write(str(path), np.stack([tone] * channels, -1), rate, subtype=subtype)
    return path


def write_video(path: Path, n: int = 50, size=(64, 48), fps: float = 25.0, **kw) -> list[np.ndarray]:
    frames = [pattern(i, *size) for i in range(n)]
    with VideoWriter(path, size, fps, **kw) as w:
        w.write_batch(np.stack(frames[:10]))
        for f in frames[10:]:
            w.write(f)
    assert w.frames_written == n
    return frames


# --- video ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,fps", [((64, 48), 30.0), ((512, 512), 25.0)])
def test_h264_yuv420p_frame_count_fps_and_quality(tmp_path, size, fps):
    out = tmp_path / "out.mp4"
    frames = write_video(out, 50, size, fps, crf=18)
    info = ffmpeg_info(out)
    assert re.search(r"Video: h264 .*yuv420p", info), info
    assert f"{size[0]}x{size[1]}" in info and f"{fps:g} fps" in info, info
    assert "Audio:" not in info
    meta, decoded = decode(out)
    assert len(decoded) == 50
    assert meta["fps"] == pytest.approx(fps)
    worst = min(psnr(a, b) for a, b in zip(decoded, frames))
    assert worst > 30, f"PSNR {worst:.1f} dB at crf 18"
    assert not list(tmp_path.glob(".*")), "no stray temp files"
    assert is_faststart(out)


@pytest.mark.parametrize("audio_s", [0.8, 3.0], ids=["audio-shorter", "audio-longer"])
def test_audio_is_muxed_and_the_video_decides_the_length(tmp_path, audio_s):
    wav = write_wav(tmp_path / "tone.wav", audio_s, rate=44100, channels=2)
    track = probe_audio(wav)
    out = tmp_path / "out.mp4"
    write_video(out, 50, (64, 48), 25.0, audio=track)  # 2.0 s of video
    info = ffmpeg_info(out)
    assert re.search(r"Audio: aac", info), info
    assert len(decode(out)[1]) == 50
    sound = load_audio(out, 16000)
    assert abs(len(sound) / 16000 - 2.0) <= 1 / 25, f"audio lasts {len(sound) / 16000:.3f} s, video 2.0 s"
    rms = lambda a, b: float(np.sqrt(np.mean(sound[int(a * 16000) : int(b * 16000)] ** 2)))  # noqa: E731
    assert rms(0.1, 0.7) > 0.2, "the tone is there"
    if audio_s < 2.0:
        assert rms(1.0, 1.95) < 1e-3, "padded with silence after the audio ends"
    else:
        assert rms(1.0, 1.95) > 0.2
    assert is_faststart(out)
    assert not list(tmp_path.glob(".*")), "the video-only intermediate is gone"


def test_audio_part_from_an_offset(tmp_path):
    import soundfile as sf

    wav = tmp_path / "two.wav"
    rate = 16000
    sf.write(str(wav), np.concatenate([np.zeros(rate), 0.5 * np.ones(rate)]).astype(np.float32), rate)
    track = dataclasses.replace(probe_audio(wav), start_s=1.0, duration_s=0.5)
    out = tmp_path / "out.mp4"
    write_video(out, 25, (64, 48), 25.0, audio=track)  # 1.0 s: 0.5 s of the loud half, then silence
    sound = load_audio(out, 16000)
    assert np.abs(sound[1000:7000]).mean() > 0.2 and np.abs(sound[9000:15000]).max() < 0.02


@pytest.mark.parametrize("suffix,container,audio_codec", [(".mkv", "matroska", "aac"), (".mov", "mov", "aac"),
                                                        (".avi", "avi", "pcm_s16le")])
def test_the_extension_decides_the_container(tmp_path, suffix, container, audio_codec):
    wav = write_wav(tmp_path / "tone.wav", 1.0)
    out = tmp_path / f"out{suffix}"
    frames = write_video(out, 25, (64, 48), 25.0, audio=probe_audio(wav))
    info = ffmpeg_info(out)
    assert re.search(rf"Input #0, {container}", info), info
    assert re.search(r"Video: h264", info) and re.search(rf"Audio: {audio_codec}", info), info
    decoded = decode(out)[1]
    assert len(decoded) == 25 and psnr(decoded[10], frames[10]) > 30
    assert abs(len(load_audio(out, 16000)) / 16000 - 1.0) <= 1 / 25


@pytest.mark.parametrize("name", ["out.gif", "out.webm", "out"])
def test_an_extension_a2p_does_not_write_is_refused_by_name(tmp_path, name):
    with pytest.raises(InputError, match="writes .mp4") as err:
        VideoWriter(tmp_path / name, (64, 48), 25)
    assert "out.mp4" in err.value.one_line() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("size", [(63, 48), (64, 47), (0, 48)])
def test_odd_or_empty_size_is_an_input_error(tmp_path, size):
    with pytest.raises(InputError, match="even") as err:
        VideoWriter(tmp_path / "x.mp4", size, 25)
    assert "\n" not in err.value.one_line()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kw", [{"fps": 0}, {"fps": float("nan")}, {"crf": 60}, {"crf": 1.5}, {"preset": "warp"}])
def test_bad_settings_are_input_errors(tmp_path, kw):
    args = {"fps": 25, **kw}
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.mp4", (64, 48), **args)


@pytest.mark.parametrize("with_audio", [False, True])
def test_exception_in_the_with_block_leaves_no_file_and_no_process(tmp_path, with_audio):
    out = tmp_path / "out.mp4"
    audio = probe_audio(write_wav(tmp_path.parent / f"{tmp_path.name}.wav", 1.0)) if with_audio else None
    with pytest.raises(ZeroDivisionError):
        with VideoWriter(out, (64, 48), 25, audio=audio) as w:
            for i in range(20):
                w.write(pattern(i, 64, 48))
            proc = w._proc
            1 / 0
    assert proc.returncode is not None, "ffmpeg was waited for (no zombie)"
    assert not Path(f"/proc/{proc.pid}").exists() or not Path("/proc/self").exists()
    assert not out.exists() and not list(tmp_path.iterdir())


def test_ffmpeg_dying_mid_stream_is_an_output_error_promptly(tmp_path):
    out = tmp_path / "out.mp4"
    w = VideoWriter(out, (512, 512), 25)
    w.write(pattern(0, 512, 512))
    w._proc.kill()
    t0 = time.monotonic()
    with pytest.raises(OutputError, match="ffmpeg failed"):
        for i in range(1000):
            w.write(pattern(i % 5, 512, 512))
        w.close()
    assert time.monotonic() - t0 < 10
    assert w._proc.returncode is not None and not out.exists()
    w.abort()  # harmless once failed


def test_wrong_frame_is_rejected(tmp_path):
    with VideoWriter(tmp_path / "out.mp4", (64, 48), 25) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.write(np.zeros((48, 64, 3), np.float32))
        with pytest.raises(ValueError):
            w.write(np.zeros((64, 48, 3), np.uint8))
        w.write(np.zeros((48, 64, 3), np.uint8))
    assert len(decode(tmp_path / "out.mp4")[1]) == 1


def test_no_frames_is_an_output_error(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(OutputError, match="no frames"):
        with VideoWriter(out, (64, 48), 25):
            pass
    assert not out.exists()


def test_missing_output_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        VideoWriter(tmp_path / "nope" / "out.mp4", (64, 48), 25)


def test_frames_dir_gets_one_png_per_frame(tmp_path):
    from PIL import Image

    frames = write_video(tmp_path / "out.mp4", 12, (64, 48), 25.0, frames_dir=tmp_path / "frames")
    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(12)]
    for i in (0, 11):
        assert np.array_equal(np.asarray(Image.open(pngs[i]).convert("RGB")), frames[i]), "lossless and RGB"


def test_the_caller_may_reuse_its_buffer(tmp_path):
    buf = np.zeros((48, 64, 3), np.uint8)
    frames = []
    with VideoWriter(tmp_path / "out.mp4", (64, 48), 25) as w:
        for i in range(20):
            buf[:] = pattern(i, 64, 48)
            frames.append(buf.copy())
            w.write(buf)
    decoded = decode(tmp_path / "out.mp4")[1]
    assert min(psnr(a, b) for a, b in zip(decoded, frames)) > 30


# --- audio ----------------------------------------------------------------------------------------


def test_probe_audio_of_a_video_without_sound_is_none(tmp_path):
    write_video(tmp_path / "silent.mp4", 5)
    assert probe_audio(tmp_path / "silent.mp4") is None
    assert probe_audio(media("liveportrait_d0.mp4")) is None


def test_probe_audio_of_wavs(tmp_path):
    track = probe_audio(write_wav(tmp_path / "a.wav", 1.5, rate=22050, channels=2))
    assert isinstance(track, AudioTrack)
    assert (track.sample_rate, track.channels, track.start_s) == (22050, 2, 0.0)
    assert track.duration_s == pytest.approx(1.5, abs=1e-3) and track.has_sound
    shared = probe_audio(media("sadtalker_RD_Radio31_000.wav"))
    assert shared.sample_rate == 16000 and shared.duration_s == pytest.approx(8.0, abs=0.01) and shared.has_sound


def test_probe_audio_of_a_video_with_sound():
    track = probe_audio(media("sadtalker_WDA_KatieHill_000.mp4"))
    assert track.sample_rate == 16000 and track.channels == 2 and track.has_sound
    assert track.duration_s == pytest.approx(8.0, abs=0.1)


@pytest.mark.parametrize("level,has_sound", [(0.0, False), (10 ** (-70 / 20), False), (10 ** (-40 / 20), True)])
def test_has_sound_tells_digital_silence(tmp_path, level, has_sound):
    track = probe_audio(write_wav(tmp_path / "q.wav", 1.0, rate=16000, level=level))
    assert track.has_sound is has_sound
    if level == 0:
        assert track.peak_dbfs == -np.inf


def test_not_media_is_an_input_error(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 50)
    with pytest.raises(InputError) as err:
        probe_audio(text)
    assert "\n" not in err.value.one_line() and err.value.remedy
    with pytest.raises(InputError):
        load_audio(text)
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(write_wav(tmp_path / "whole.wav", 1.0).read_bytes()[:30])
    with pytest.raises(InputError):
        probe_audio(truncated)
    with pytest.raises(InputError, match="not found"):
        probe_audio(tmp_path / "missing.wav")


def test_load_audio_downmixes_and_resamples(tmp_path):
    wav = write_wav(tmp_path / "st.wav", 1.5, rate=44100, channels=2, level=0.8, subtype="PCM_24")
    audio = load_audio(wav)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24000) <= 1
    assert np.abs(audio).max() == pytest.approx(0.8, abs=0.02), "downmix keeps the level"
    part = load_audio(wav, 8000, start_s=0.5, duration_s=0.5)
    assert abs(len(part) - 4000) <= 1


def test_load_audio_other_formats(tmp_path):
    flac = write_wav(tmp_path / "a.flac", 1.0, rate=48000, subtype="PCM_16")
    assert abs(len(load_audio(flac)) - 16000) <= 1
    speech = load_audio(media("sadtalker_WDA_KatieHill_000.mp4"))
    assert abs(len(speech) / 16000 - 8.0) < 0.1 and np.abs(speech).max() > 0.05


def test_load_audio_of_a_file_without_sound(tmp_path):
    write_video(tmp_path / "silent.mp4", 5)
    with pytest.raises(InputError, match="has no audio stream"):
        load_audio(tmp_path / "silent.mp4")
