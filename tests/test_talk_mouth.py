"""The mouth a talking portrait starts from: open and closed portraits told apart by their pixels, the
model's lips starting from a closed mouth on an open-mouthed portrait, and the renderer opening closed lips
whose landmarks part."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED, media
from tests.test_audio2video import mouth_series, run_ok, speech_wav  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def open_portrait(tmp_path_factory) -> Path:
    """A frame of liveportrait_d3 with the mouth wide open (teeth and cavity showing)."""
    import cv2

    from a2pcli.media import decode_size, probe_video, stream_frames

    info = probe_video(media("liveportrait_d3.mp4"))
    frames = [f.copy() for f in stream_frames(info, size=decode_size(info, 512), fps=25, end=0.64)]
    path = tmp_path_factory.mktemp("open") / "open_mouth.png"
    cv2.imwrite(str(path), frames[15][..., ::-1])
    return path


def _load(path: Path):
    from a2pcli.pipeline.portrait import PortraitOptions, load_portrait

    return load_portrait(path, PortraitOptions(crop=True, size=256))


def _parted_landmarks(face, by: float):
    """The same face with its lower inner lip line `by` face units lower, the pixels unchanged: closed lips
    whose landmarks sit inside the lips."""
    from a2pcli import facemesh as fm
    from a2pcli.headpose import load_reference
    from a2pcli.retarget import portrait_face

    lm = face.landmarks.copy()
    lm[fm.LIPS_INNER_LOWER[1:-1], 1] += by * face.scale
    return portrait_face(lm, load_reference())


def test_an_open_mouth_shows_an_interior(open_portrait):
    from a2pcli.mouth import lip_gap, open_mouth_gap

    closed = _load(media("sadtalker_happy.png"))
    assert open_mouth_gap(closed.image, closed.face) == 0.0
    opened = _load(open_portrait)
    gap = open_mouth_gap(opened.image, opened.face)
    assert gap > 0.05 and gap == pytest.approx(float(lip_gap(opened.face.canon[None])[0]))
    # lip landmarks that part on closed lips do not make an open mouth
    closed = _load(media("liveportrait_s9.jpg"))
    parted = _parted_landmarks(closed.face, 0.05)
    assert float(lip_gap(parted.canon[None])[0]) > 0.04
    assert open_mouth_gap(closed.image, parted) == 0.0


def test_closed_lips_whose_landmarks_part_get_an_interior():
    """The renderer paints a mouth interior when the lips open beyond the portrait's parted lip lines."""
    from a2pcli import facemesh as fm
    from a2pcli.headpose import apply_pose
    from a2pcli.mouthnet import load_model
    from a2pcli.render import WarpRenderer
    from a2pcli.retarget import FaceTargets

    closed = _load(media("liveportrait_s9.jpg"))
    face = _parted_landmarks(closed.face, 0.05)
    n = 2
    canon = np.repeat(face.canon[None], n, 0)
    lower = np.concatenate([fm.LIPS_INNER_LOWER[1:-1], fm.LIPS_OUTER_LOWER[1:-1], fm.CHIN])
    canon[1, lower, 1] += 0.12  # frame 1: the lips part by 0.12 more
    rot = np.repeat(face.rotation[None], n, 0)
    trans = np.repeat(face.translation[None], n, 0)
    scale = np.full(n, face.scale, np.float32)
    tgt = FaceTargets(apply_pose(canon, rot, trans, scale), rot, trans, scale)
    frames = WarpRenderer(closed.image, face, tgt, mouth=load_model()).render(tgt)
    lm = tgt.landmarks[1]
    x0, x1 = int(lm[fm.LIPS_INNER_UPPER, 0].min()) + 3, int(lm[fm.LIPS_INNER_UPPER, 0].max()) - 3
    y_mid = int(round(0.5 * (lm[13, 1] + lm[14, 1])))
    luma = lambda f: (f[y_mid - 1 : y_mid + 2, x0:x1].astype(np.float32) @ [0.299, 0.587, 0.114]).mean()  # noqa: E731
    # a painting's muted palette: the learnt interior is darker than the closed lips by about 11 % (measured 0.885)
    assert luma(frames[1]) < 0.93 * luma(frames[0]), "no mouth interior where the lips opened"


def test_closed_rest_closes_the_lips():
    from a2pcli import facemesh as fm
    from a2pcli.audio2motion import load_model
    from a2pcli.landmarks import LOWER_LIP_INNER, UPPER_LIP_INNER
    from a2pcli.mouth import closed_rest

    shape = load_model().opening_shape()
    assert shape[LOWER_LIP_INNER, 1] - shape[UPPER_LIP_INNER, 1] == pytest.approx(1.0, abs=1e-4)
    assert np.isfinite(shape).all() and not shape[fm.RIGHT_EYE_UPPER].any()  # the lower face only
    rest = closed_rest(0.08, shape)
    assert rest[LOWER_LIP_INNER, 1] - rest[UPPER_LIP_INNER, 1] == pytest.approx(-0.08, abs=1e-5)
    assert not closed_rest(0.0, shape).any()


def test_closed_rest_closes_each_lip_as_a_whole():
    """On a smile that shows its teeth, the rest closes the inner lip lines and carries each lip's outer line
    with them (the lips keep their thickness); the chin rises with the lower lip."""
    from a2pcli import facemesh as fm
    from a2pcli.audio2motion import load_model
    from a2pcli.mouth import closed_rest, open_mouth_gap

    portrait = SHARED / "corpus" / "portraits" / "ali-vilab__dreamtalk__menglu2.png"
    if not portrait.exists():
        pytest.skip(f"corpus portrait {portrait} not present (set A2P_SHARED to the shared folder)")
    face = _load(portrait).face
    gap = open_mouth_gap(_load(portrait).image, face)
    assert gap > 0.1
    canon = face.canon + closed_rest(gap, load_model().opening_shape(), face.canon)
    inner = canon[fm.LIPS_INNER_LOWER[1:-1], 1] - canon[fm.LIPS_INNER_UPPER[1:-1], 1]
    assert np.abs(inner).max() < 1e-4  # closed
    for outer, inner_line in ((fm.LIPS_OUTER_UPPER, fm.LIPS_INNER_UPPER), (fm.LIPS_OUTER_LOWER, fm.LIPS_INNER_LOWER)):
        before = face.canon[inner_line[1:-1], 1] - face.canon[outer[1:-1], 1]
        after = canon[inner_line[1:-1], 1] - canon[outer[1:-1], 1]
        assert np.allclose(before, after, atol=1e-5)  # each lip keeps its thickness
    chin = fm.FACE_OVAL[18]  # the bottom of the chin
    assert canon[chin, 1] < face.canon[chin, 1] - 0.3 * gap
    assert not closed_rest(0.0, load_model().opening_shape(), face.canon).any()


def test_open_mouthed_portrait_closes_in_silence(capsys, tmp_path, open_portrait, speech_wav):  # noqa: F811
    """An open-mouthed portrait talks from a closed mouth: in the silence after the speech the mouth is
    closed, not held open as the portrait's."""
    out = tmp_path / "open_talk.mp4"
    run_ok(capsys, open_portrait, speech_wav, "--crop", "--size", "256", "-o", out)
    m = mouth_series(out)
    portrait_opening = mouth_series_of_image(open_portrait)
    speaking, silent = m[: int(2 * 25)], m[int(2.4 * 25):]
    assert silent.max() < 0.4 * portrait_opening, (silent.max(), portrait_opening)
    assert speaking.max() > silent.max() + 0.05


def mouth_series_of_image(path: Path) -> float:
    from a2pcli.landmarks import mouth_opening

    return float(mouth_opening(_load(path).face.landmarks))


def test_talk_targets_apply_the_rest():
    from a2pcli.headpose import load_reference
    from a2pcli.landmarks import LOWER_LIP_INNER, UPPER_LIP_INNER
    from a2pcli.talk import TalkOptions, talk_targets

    face = _load(media("sadtalker_happy.png")).face
    n = 3
    lips = np.zeros((n, 478, 3), np.float32)
    rest = np.zeros((478, 3), np.float32)
    rest[LOWER_LIP_INNER, 1] = 0.01
    opts = dataclasses.replace(TalkOptions(), still=True, blink_rate=0.0)
    ref = load_reference().mean
    a, _ = talk_targets(face, np.zeros(16000, np.float32), 25.0, n, lips, opts, ref)
    b, _ = talk_targets(face, np.zeros(16000, np.float32), 25.0, n, lips, opts, ref, rest=rest)
    from a2pcli import facemesh as fm

    gap = lambda t: t.landmarks[:, LOWER_LIP_INNER, 1] - t.landmarks[:, UPPER_LIP_INNER, 1]  # noqa: E731
    assert np.allclose(gap(b) - gap(a), 0.01 * face.scale, rtol=0.1, atol=0.05 * 0.01 * face.scale)
    rest_of_face = np.setdiff1d(np.arange(478), fm.LIPS)  # the lips never cross: both inner lines may move
    assert np.allclose(b.landmarks[:, rest_of_face], a.landmarks[:, rest_of_face], atol=1e-3)
