"""`--motion aniportrait`: the reference face's metric mesh and pose matrix rebuilt from a2p's landmarks
(checked against MediaPipe FaceLandmarker's own outputs in the landmarker fixture), AniPortrait's
audio2mesh/audio2pose driving them, and the CLI end to end on the tiny weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from a2pcli.aniportrait import geometry as G
from a2pcli.aniportrait import motion as AM
from tests import aniportrait_fixtures as fx
from tests.conftest import media, run_a2p

SIZE = 512  # the oracle ran FaceLandmarker on the images resized to 512 x 512, as audio2vid does
IMAGES = ["liveportrait_s12.jpg", "liveportrait_s9.jpg", "sadtalker_happy.png", "sadtalker_art_0.png"]
rng = np.random.default_rng(0)
DELTA_POSES = np.c_[rng.uniform(-10, 10, (20, 3)), rng.uniform(-1, 1, (20, 3))]  # +-10 degrees, +-1 cm


@pytest.fixture(scope="module")
def oracle():
    return fx.arrays("landmarker.npz")


@pytest.fixture(scope="module")
def ref():
    from a2pcli.headpose import load_reference

    return load_reference()


def _rotation_deg(a, b):
    ra = a[:3, :3] / np.linalg.norm(a[:3, 0])
    rb = b[:3, :3] / np.linalg.norm(b[:3, 0])
    return float(np.degrees(np.arccos(np.clip((np.trace(ra.T @ rb) - 1) / 2, -1, 1))))


def _compare(geom, lm_px, oracle, i):
    """Numbers of the construction against the oracle's (lmks3d, trans_mat) for image i."""
    mesh, mat = oracle[f"img{i}_lmks3d"], oracle[f"img{i}_trans_mat"]
    zero = AM.project(geom, geom.mesh[None], np.zeros((1, 6)))[0]
    n = len(DELTA_POSES)
    ours = G.project_points(np.repeat(geom.lmks3d[None], n, 0), geom.trans_mat, DELTA_POSES, [SIZE, SIZE])
    theirs = G.project_points(np.repeat(mesh[None], n, 0), mat, DELTA_POSES, [SIZE, SIZE])
    d = np.linalg.norm(geom.lmks3d - mesh, axis=1)
    return {
        "reproject_px": float(np.abs(zero[:, :2] - lm_px[:, :2]).max()),
        "z_px": float(np.abs(zero[:, 2] - lm_px[:, 2]).max()),
        "mesh_rms_cm": float(np.sqrt((d**2).mean())),
        "mesh_max_cm": float(d.max()),
        "rotation_deg": _rotation_deg(geom.trans_mat, mat),
        "translation_cm": float(np.linalg.norm(geom.trans_mat[:3, 3] - mat[:3, 3])),
        "scale": float(np.linalg.norm(geom.trans_mat[:3, 0])),
        "delta_pose_px_mean": float(np.linalg.norm(ours - theirs, axis=-1).mean()),
    }


def test_fixture_sign_conventions(oracle):
    """FaceLandmarker's lmks3d posed by trans_mat and projected by AniPortrait's camera land on its 2D landmarks:
    the convention the construction must follow (cm, GL axes: y up, z towards the camera, camera at -z)."""
    for i in range(4):
        lm = oracle[f"img{i}_lmks"][:468, :2] * SIZE
        proj = G.project_points(oracle[f"img{i}_lmks3d"][None], oracle[f"img{i}_trans_mat"], np.zeros((1, 6)),
                                [SIZE, SIZE])[0]
        assert np.abs(proj - lm).max() < 0.03
        assert oracle[f"img{i}_trans_mat"][2, 3] < -10  # the face is in front of the camera (-z)
        assert oracle[f"img{i}_lmks3d"][1, 2] > 5  # the nose tip points at the camera (+z)


@pytest.mark.parametrize("i", range(4))
def test_mesh_and_matrix_from_the_oracles_landmarks(oracle, ref, i):
    """The construction on FaceLandmarker's own 2D landmarks: the zero-pose projection is the input (within
    AniPortrait's projection quirk, w = 1.0001 * depth: 0.03 px at 512), and mesh and matrix are close to
    the geometry pipeline's."""
    lm = oracle[f"img{i}_lmks"] * SIZE  # z scaled like x, as a2p stores it
    geom = AM.face_geometry(lm, SIZE, SIZE, ref)
    assert geom.mesh.shape == (478, 3) and geom.trans_mat.shape == (4, 4)
    m = _compare(geom, lm, oracle, i)
    assert m["reproject_px"] < 0.03 and m["z_px"] < 1e-6
    assert abs(m["scale"] - 1) < 1e-4  # like MediaPipe's: the unprojected face has the canonical size
    assert m["mesh_rms_cm"] < 0.45 and m["mesh_max_cm"] < 1.0
    assert m["rotation_deg"] < 5.5 and m["translation_cm"] < 1.2
    assert m["delta_pose_px_mean"] < 1.5


@pytest.mark.parametrize("i", range(4))
def test_mesh_and_matrix_from_a2p_landmarks(oracle, ref, i):
    """End to end from the image: a2p's face mesh (legacy face_mesh, not FaceLandmarker: its 2D points differ
    by 1-2.5 px) on the oracle's 512 x 512 input."""
    import cv2

    from a2pcli.landmarks import detect_image
    from a2pcli.media import load_image

    image = cv2.resize(load_image(media(IMAGES[i])), (SIZE, SIZE))
    lm = detect_image(image)[0]
    geom = AM.face_geometry(lm, SIZE, SIZE, ref)
    m = _compare(geom, lm, oracle, i)
    assert m["reproject_px"] < 0.03 and m["z_px"] < 1e-3
    assert m["mesh_rms_cm"] < 0.5 and m["mesh_max_cm"] < 1.3
    assert m["rotation_deg"] < 9 and m["translation_cm"] < 2.5
    assert m["delta_pose_px_mean"] < 3.5


def test_calibration_constants_match_the_fixtures(oracle, ref):
    """The canonical-face alignment constants are what the landmarker fixture gives for a2p's reference face."""
    base = AM.canonical_face(ref.mean, 9.0, 0.0, (0.0, 0.0, 0.0))
    meshes = [AM.screen_to_metric(oracle[f"img{i}_lmks"] * SIZE, SIZE, SIZE, base, ref.weights).mesh for i in range(4)]
    s, rot, t = AM.fit_canonical_alignment(meshes, [oracle[f"img{i}_lmks3d"] for i in range(4)])
    euler = G.euler_xyz_from_quat(G.quat_from_matrix(rot))
    assert abs(9.0 * s - AM.CM_PER_FACE_UNIT) < 0.02
    assert abs(euler[0] - AM.PITCH_DEG) < 0.05 and np.abs(euler[1:]).max() < 0.5
    assert np.abs(t - np.array(AM.ORIGIN_CM)).max() < 0.02


def test_project_is_aniportraits_projection(oracle, ref):
    geom = AM.face_geometry(oracle["img3_lmks"] * SIZE, SIZE, SIZE, ref)
    meshes = np.repeat(geom.mesh[None], len(DELTA_POSES), 0)
    ours = AM.project(geom, meshes, DELTA_POSES)
    theirs = G.project_points(meshes, geom.trans_mat, DELTA_POSES, [SIZE, SIZE])
    assert np.abs(ours[..., :2] - theirs).max() < 1e-9


def test_non_square_image(oracle, ref):
    """Landmarks of a 512 x 512 image stretched to 640 x 480: still exact at zero pose."""
    lm = oracle["img0_lmks"] * np.array([640, 480, 640])
    geom = AM.face_geometry(lm, 640, 480, ref)
    zero = AM.project(geom, geom.mesh[None], np.zeros((1, 6)))[0]
    assert np.abs(zero - lm).max() < 0.05


def test_resample():
    x = np.arange(30, dtype=float)[:, None]
    assert np.array_equal(AM.resample(x, 30, 30, 30), x)
    out = AM.resample(x, 30, 25, 25)
    assert np.allclose(out[:, 0], np.minimum(np.arange(25) * 1.2, 29))


def test_pose_from_motion_round_trip():
    """An a2p motion with a known head turn becomes that turn in canonical space (pitch sign: GL x axis)."""
    from a2pcli.motion import from_euler

    n = 50
    yaw = np.linspace(0, 10, n)
    motion = from_euler(np.c_[yaw, np.zeros(n), np.zeros(n)], np.zeros((n, 3)), fps=25.0)
    pose = AM.pose_from_motion(motion)
    assert pose.shape == (60, 6)  # 2 s at 30 fps
    assert np.abs(pose[0]).max() < 1e-9
    # image-frame yaw about y (down) is a rotation about GL's y (up) with the opposite sign, tilted by the pitch
    assert abs(abs(pose[-1, 1]) - yaw[-1]) < 0.3 and np.abs(pose[-1, [0, 2]]).max() < 0.5
    # the pivot is a2p's face centre, not the canonical origin: the turn comes with a translation
    assert np.abs(pose[-1, 3:]).max() > 0.1


def test_template_npy_is_used_as_it_is(tmp_path):
    arr = rng.normal(size=(37, 6))
    np.save(tmp_path / "t.npy", arr)
    assert np.array_equal(AM.load_pose_template(tmp_path / "t.npy"), arr)
    np.save(tmp_path / "bad.npy", np.zeros((5, 4)))
    from a2pcli.errors import InputError

    with pytest.raises(InputError) as exc:
        AM.load_pose_template(tmp_path / "bad.npy")
    assert "bad.npy" in exc.value.one_line() and "(T, 6)" in exc.value.one_line()


# ---- the audio models on the tiny weights ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    fx.folder()
    return fx.write_tiny_folder(tmp_path_factory.mktemp("pretrained_model"))


@pytest.fixture(scope="module")
def speech_1s(tmp_path_factory):
    return fx.speech_wav(tmp_path_factory.mktemp("speech"))


def test_speech_motion_on_tiny_weights(tiny_folder, speech_1s, oracle, ref):
    from a2pcli.aniportrait.weights import open_weights

    _, wave = speech_1s
    w = open_weights(tiny_folder, fullsize=False)
    a = AM.speech_motion(wave, w, seed=3)
    assert a.offsets.shape == (30, 468, 3) and a.pose.shape == (30, 6) and a.id_seed == AM.style_id(3)
    assert np.abs(a.pose).max() > 0 and np.abs(a.offsets).max() > 0
    b = AM.speech_motion(wave, w, seed=3)
    assert np.array_equal(a.pose, b.pose) and np.array_equal(a.offsets, b.offsets)  # seeded
    other = next(s for s in range(1, 50) if AM.style_id(s) != a.id_seed)
    assert not np.array_equal(AM.speech_motion(wave, w, seed=other).pose, a.pose)
    still = AM.speech_motion(wave, w, seed=3, still=True)
    assert not still.pose.any() and still.id_seed is None
    template = rng.normal(size=(7, 6))
    tiled = AM.speech_motion(wave, w, template=template)
    assert np.array_equal(tiled.pose, G.tile_template(template, 30)) and tiled.notes

    lm = oracle["img2_lmks"] * SIZE
    at30 = a.landmarks(lm, SIZE, SIZE, 30.0, 30, ref)
    assert at30.shape == (30, 478, 3) and at30.dtype == np.float32
    direct = G.landmarks_2d(a.offsets.reshape(30, -1), AM.face_geometry(lm, SIZE, SIZE, ref).lmks3d,
                            AM.face_geometry(lm, SIZE, SIZE, ref).trans_mat, a.pose, SIZE, SIZE)
    assert np.abs(at30[:, :468, :2] - direct).max() < 1e-3  # audio2vid's own formula at 30 fps
    at25 = a.landmarks(lm, SIZE, SIZE, 25.0, 25, ref)
    assert at25.shape == (25, 478, 3)
    assert np.abs(at25[0] - at30[0]).max() < 1e-4  # t = 0 in both
    assert np.abs(at25[5] - at30[6]).max() < 1e-4  # t = 0.2 s in both
    iris = at30[:, 468:, :2].mean(1)
    eyes = at30[:, [33, 133, 362, 263], :2].mean(1)
    assert np.linalg.norm(iris - eyes, axis=-1).max() < 15  # the irises stay in the eyes
    zero = AM.speech_motion(wave, w, still=True, expression_scale=0.0).landmarks(lm, SIZE, SIZE, 25.0, 3, ref)
    assert np.abs(zero - lm[None]).max() < 0.05  # no offsets, no pose: the portrait itself


def test_too_short_audio_is_refused(tiny_folder):
    from a2pcli.errors import InputError

    with pytest.raises(InputError, match="too short"):
        AM.speech_motion(np.zeros(800, np.float32), tiny_folder)


@pytest.mark.slow
def test_audio2video_motion_aniportrait_tiny_end_to_end(tiny_folder, speech_1s, tmp_path):

    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s[0], "-o", out, "--renderer", "aniportrait",
                   "--motion", "aniportrait", "--weights", tiny_folder, "--steps", "2", "--size", "64",
                   "--device", "cpu", "--seed", "5", "--json", check=0)
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["renderer"] == "aniportrait" and summary["size"] == [64, 64]
    assert summary["frames"] == 25
    frames = fx.video_frames(out)
    assert frames.shape == (25, 64, 64, 3) and frames.std() > 1.0


@pytest.mark.slow
def test_audio2video_motion_aniportrait_with_template(tiny_folder, speech_1s, tmp_path):
    np.save(tmp_path / "pose.npy", np.c_[np.linspace(0, 5, 20)[:, None] * np.ones((1, 3)), np.zeros((20, 3))])
    out = tmp_path / "talk.mp4"
    proc = run_a2p("audio2video", media("sadtalker_happy.png"), speech_1s[0], "-o", out, "--renderer", "aniportrait",
                   "--motion", "aniportrait", "--pose", tmp_path / "pose.npy", "--weights", tiny_folder,
                   "--steps", "1", "--size", "64", "--device", "cpu", "--fps", "10", "--json", check=0)
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["frames"] == 10
    assert any("played back and forth" in n for n in summary["notes"])
