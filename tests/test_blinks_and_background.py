"""Blinks that close and a background that stays put, checked as a user would see them: MediaPipe reads the
rendered eyes, MediaPipe's person segmentation tells the background from the person in the portrait and in
every rendered frame. Quick versions of benchmarks/eval_blinks.py and benchmarks/eval_background.py (shared
measurements imported from there); thresholds sit a little past what was measured on a 2-core CPU (measured
values in the comments)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from a2pcli import facemesh as fm
from tests.conftest import media
from tests.test_animate import read_video
from tests.test_audio2video import SR, run_ok, tone_speech, write_wav

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import eval_background as bg  # noqa: E402
import eval_blinks as bl  # noqa: E402

FPS = 25.0


def talk(capsys, portrait: Path, wav: Path, out: Path, *args) -> dict:
    """One audio2video's --json result, a 256-pixel face crop at 25 fps."""
    return run_ok(capsys, portrait, wav, "-o", out, "--crop", "--size", "256", "--fps", FPS, *args)


@pytest.fixture(scope="module")
def speech_4s(tmp_path_factory) -> Path:
    """4 s of real speech with a pause in the middle."""
    from a2pcli.audio import load_audio

    speech = load_audio(media("sadtalker_RD_Radio31_000.wav"), SR, start_s=0.5, duration_s=3.0)
    audio = np.concatenate([speech[: int(1.5 * SR)], np.zeros(SR, np.float32), speech[int(1.5 * SR) :]])
    return write_wav(tmp_path_factory.mktemp("speech") / "speech_4s.wav", audio)


# measured at the deepest frame of each blink, over the clip's median openness: photo 0.29-0.30, painting 0.35-0.38
@pytest.mark.parametrize("portrait,bar", [("sadtalker_happy.png", 0.40), ("liveportrait_s9.jpg", 0.42)])
def test_a_generated_blink_closes_the_eyes_as_mediapipe_sees_them(capsys, tmp_path, speech_4s, portrait, bar):
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.audio import load_audio
    from a2pcli.talk import TalkOptions, blink_schedule

    out = tmp_path / "talk.mp4"
    talk(capsys, media(portrait), speech_4s, out, "--blink-rate", "40")
    frames, _ = read_video(out)
    image = load_portrait(media(portrait), PortraitOptions(crop=True, size=256)).image
    peaks = blink_schedule(load_audio(speech_4s, SR), FPS, len(frames), TalkOptions(blink_rate=40.0), image)
    assert len(peaks) >= 2, f"expected blinks in 4 s at 40 a minute, scheduled {peaks}"
    openness = bl.openness_series(frames)
    depth = bl.blink_depths(openness, peaks)
    assert np.all(depth <= bar), f"blink depths {np.round(depth, 3)} (openness over the clip's median)"
    after = [openness[p + 8] / np.nanmedian(openness) for p in peaks if p + 8 < len(frames)]
    assert np.all(np.array(after) > 0.8), f"the eyes did not open again: {np.round(after, 2)}"


def test_a_closed_lid_covers_the_eye_and_its_skin_fades_out_towards_the_lids_ends():
    """The lid layer at full closure: every pixel of the eye is covered; above the eye, where the lid only
    restyles skin, its cover fades to nothing at the lid's ends (no hard vertical sides)."""
    import torch

    from a2pcli.eyelids import EYES, U_RANGE, EyeLid
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait

    p = load_portrait(media("sadtalker_happy.png"), PortraitOptions(max_size=256))
    lid = EyeLid.of(p.image, p.face.landmarks, EYES[0], float(p.face.scale))
    t = lid.to("cpu")
    u = np.linspace(*U_RANGE, len(lid.top))
    on = np.flatnonzero(lid.bottom > lid.top)
    mid, end = on[len(on) // 2], on[0] + max(1, len(on) // 25)  # near the lid's end, inside it

    def cover(k: int, v: float) -> float:
        pos = lid.origin + u[k] * lid.width * lid.axis + v * lid.normal
        return float(t.layer(torch.tensor(pos[None], dtype=torch.float32), 1.0)[1][0])

    middle_of_eye = 0.5 * (lid.top[mid] + lid.bottom[mid])
    assert cover(mid, middle_of_eye) > 0.99, "the closed lid leaves the eye uncovered"
    above = 0.5 * (lid.skin[end] + lid.top[end])  # halfway up the stretched lid skin
    assert cover(mid, 0.5 * (lid.skin[mid] + lid.top[mid])) > 0.99, "the lid's skin is not drawn above the eye"
    assert cover(end, above) < 0.2, f"the lid's skin ends in a hard side: cover {cover(end, above):.2f} near its end"


def test_a_closed_lid_is_smooth_across_where_the_lashes_above_the_eye_would_streak_it():
    """A portrait with dark, long lashes: stretched down over the eye as they are, the lashes above the open
    eye would run down the closed lid as streaks; the closed lid's skin is cleaned of them (smooth across the
    eye, column to column), and takes over only as the lid closes."""
    import torch

    from a2pcli.eyelids import EYES, U_RANGE, EyeLid
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait

    p = load_portrait(media("sadtalker_happy.png"), PortraitOptions(max_size=512))
    image = torch.from_numpy(p.image.astype(np.float32))
    for eye in EYES:
        lid = EyeLid.of(p.image, p.face.landmarks, eye, float(p.face.scale))
        t = lid.to("cpu")
        u = np.linspace(*U_RANGE, len(lid.top))
        cols = np.flatnonzero((lid.bottom - lid.top > 0.6 * (lid.bottom - lid.top).max()))
        k = np.linspace(cols[0], cols[-1], 80)  # across the middle of the eye, finer than the samples
        uu = np.interp(k, np.arange(len(u)), u)
        vv = np.interp(k, np.arange(len(u)), 0.5 * (lid.top + lid.bottom))  # halfway down: inside the closed lid
        pos = lid.origin + uu[:, None] * lid.width * lid.axis + vv[:, None] * lid.normal

        def colour(closure: float, cleaned: bool) -> np.ndarray:
            src, cover, tone, ink, clean = t.layer(torch.tensor(pos, dtype=torch.float32), closure)
            x, y = src[:, 0].round().long().clamp(0, image.shape[1] - 1), src[:, 1].round().long().clamp(0, image.shape[0] - 1)
            if not cleaned:
                clean = clean * torch.tensor([1.0, 1.0, 1.0, 0.0])
            return (t.paint(image[y, x], tone, ink, clean) @ torch.tensor([0.299, 0.587, 0.114])).numpy()

        def roughness(luma: np.ndarray) -> float:  # column-to-column change, grey levels
            return float(np.abs(np.diff(luma, 2)).mean())

        stretched, cleaned = roughness(colour(1.0, False)), roughness(colour(1.0, True))
        assert cleaned < 0.5 * stretched, f"the closed lid is streaked: {cleaned:.2f} against {stretched:.2f}"
        assert np.allclose(colour(0.0, True), colour(0.0, False)), "the cleaned skin shows before the lid moves"


def test_blink_times_follow_the_seed_the_speech_and_the_portrait():
    from a2pcli.talk import TalkOptions, blink_schedule

    a, b = tone_speech(20.0, seed=0), tone_speech(20.0, seed=1)
    image = np.full((64, 64, 3), 128, np.uint8)
    other = image.copy()
    other[0, 0, 0] = 129
    n, opts = int(20 * FPS), TalkOptions()
    first = blink_schedule(a, FPS, n, opts, image)
    assert 3 <= len(first) <= 12, first  # about 17 a minute
    assert np.array_equal(first, blink_schedule(a.copy(), FPS, n, opts, image.copy())), "same inputs, other blinks"
    for changed in (blink_schedule(b, FPS, n, opts, image), blink_schedule(a, FPS, n, opts, other),
                    blink_schedule(a, FPS, n, TalkOptions(seed=1), image)):
        assert not np.array_equal(first, changed), "a different speech, portrait or seed blinked at the same times"
    assert np.all(np.diff(first) >= 1.2 * FPS - 1), "blinks closer than the minimum gap"


def test_blinks_gather_in_the_pauses_of_the_speech():
    from a2pcli.talk import TalkOptions, blink_schedule, loudness

    n = int(30 * FPS)
    speech = tone_speech(30.0)
    speech[(np.arange(len(speech)) // (3 * SR)) % 2 == 1] *= 0.001  # 3 s of speech, 3 s of pause, ...
    pause = loudness(speech, FPS, n) < -60
    hits = np.concatenate([blink_schedule(speech, FPS, n, TalkOptions(seed=s)) for s in range(40)])
    share = pause[hits].mean()
    assert share > pause.mean() + 0.15, f"{share:.0%} of blinks in pauses that are {pause.mean():.0%} of the time"


def test_two_speech_files_on_one_portrait_blink_at_different_times(capsys, tmp_path, speech_4s):
    other = write_wav(tmp_path / "other.wav", tone_speech(4.0, seed=3))
    times = []
    for wav in (speech_4s, other):
        talk(capsys, media("sadtalker_happy.png"), wav, tmp_path / f"{wav.stem}.mp4", "--blink-rate", "40")
        frames, _ = read_video(tmp_path / f"{wav.stem}.mp4")
        o = bl.openness_series(frames)
        times.append(np.nonzero(o / np.nanmedian(o) < 0.6)[0])  # the frames the eyes are (nearly) shut, measured
    assert len(times[0]) and len(times[1])
    assert not np.array_equal(times[0], times[1]), f"both blinked at frames {times[0]}"


@pytest.fixture(scope="module")
def turning_head(tmp_path_factory):
    """liveportrait_d3's motion, every 4th frame (yaw -23..+17 degrees; the head also moves, up to 0.44 face
    units)."""
    import quality as q

    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test cache fixture
        mp.setenv("A2P_CACHE_DIR", str(tmp_path_factory.mktemp("cache-module")))
        return q.subsample(q.driving(media("liveportrait_d3.mp4")), 4)


# measured on in-memory frames at 256 px (no encoding), 0.2 face units clear of the person's outline:
# painting 84.2 dB worst / 94.1 mean (its background pixels are the portrait's), full-body picture 41.5 / 46.8
# (the headband's lace, which the renderer moves with the head, is background to the measure's segmentation)
@pytest.mark.parametrize("portrait", ["liveportrait_s9.jpg", "sadtalker_full_body_1.png"])
def test_the_background_stays_still_while_the_head_turns(turning_head, portrait):
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
    from a2pcli.pipeline.reenact import motion_targets
    from a2pcli.pipeline.renderers import render_frames
    from a2pcli.retarget import RetargetOptions

    p = load_portrait(media(portrait), PortraitOptions(max_size=256))
    frames = np.concatenate(list(render_frames(p, motion_targets(p, turning_head, RetargetOptions(region="pose")))))
    rest = np.abs(frames[0].astype(int) - p.image.astype(int)).max(-1)
    lips = p.face.landmarks[fm.LIPS, :2]  # a portrait that shows its teeth has its mouth closed by the mouth model
    pad = 0.2 * p.face.scale
    (mx0, my0), (mx1, my1) = (lips.min(0) - pad).astype(int), (lips.max(0) + pad).astype(int)
    rest[max(my0, 0) : my1, max(mx0, 0) : mx1] = 0
    assert rest.max() <= 1, "the first frame is not the portrait (away from the mouth)"
    seg = bg.Segmenter()
    still = bg.clear_of(seg.person(p.image), bg.MARGIN * p.face.scale) & bg.working_region_mask(p.image.shape[:2], p.face)
    assert still.sum() > 2000, "too little background near the head to check"
    db = np.array([bg.masked_psnr(f, p.image, still & bg.clear_of(seg.person(f), bg.MARGIN * p.face.scale))
                   for f in frames])
    assert db.min() >= 39.0 and db.mean() >= 44.0, f"background PSNR worst {db.min():.1f} dB, mean {db.mean():.1f} dB"
    # and the head did turn: the face region changed
    x0, y0, x1, y1 = (int(v) for v in np.r_[p.face.landmarks[:, :2].min(0), p.face.landmarks[:, :2].max(0)])
    change = np.abs(frames[:, y0:y1, x0:x1].astype(int) - p.image[y0:y1, x0:x1].astype(int)).mean((1, 2, 3))
    assert change.max() > 15, f"the face barely moved: {change.max():.1f}"


def test_without_a_person_found_the_background_moves_with_the_head_and_the_summary_says_so(
        capsys, tmp_path, monkeypatch):
    from a2pcli import backdrop

    monkeypatch.setattr(backdrop, "segment_person", lambda image: np.zeros(image.shape[:2], np.float32))
    wav = write_wav(tmp_path / "s.wav", tone_speech(1.0))
    s = talk(capsys, media("sadtalker_happy.png"), wav, tmp_path / "o.mp4")
    assert any("background moves with the head" in n for n in s["notes"]), s["notes"]
