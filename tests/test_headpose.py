"""The geometry under extract-pose: similarity fit, Euler angles, gap filling, templates."""

import numpy as np
import pytest

from a2pcli.extract import fill_gaps, smooth_landmarks
from a2pcli.headpose import (apply_pose, canonical, euler_from_matrix, fit_pose, load_reference, matrix_from_euler,
                             umeyama)
from a2pcli.motion import load_aniportrait_template, load_motion


def test_euler_round_trip():
    rng = np.random.default_rng(0)
    e = rng.uniform([-60, -40, -30], [60, 40, 30], size=(50, 3))
    assert np.allclose(euler_from_matrix(matrix_from_euler(e)), e, atol=1e-3)


def test_umeyama_recovers_a_known_pose():
    ref = load_reference()
    e = np.array([[20.0, -10.0, 5.0], [0.0, 0.0, 0.0]])
    r = matrix_from_euler(e)
    s = np.array([180.0, 90.0], np.float32)
    t = np.array([[256, 240, 10], [100, 50, 0]], np.float32)
    lm = apply_pose(np.broadcast_to(ref.mean, (2, 478, 3)), r, t, s)
    r2, t2, s2 = fit_pose(lm, ref)
    assert np.allclose(euler_from_matrix(r2), e, atol=1e-2)
    assert np.allclose(s2, s, rtol=1e-4) and np.allclose(t2, t, atol=1e-2)
    assert np.allclose(canonical(lm, r2, t2, s2), ref.mean, atol=1e-4)


def test_umeyama_gives_proper_rotations_on_noise():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(478, 3))
    dst = rng.normal(size=(4, 478, 3))
    r, _, _ = umeyama(src, dst, np.full(478, 1 / 478))
    assert np.allclose(np.linalg.det(r), 1.0, atol=1e-4)


def test_reference_is_frontal_and_symmetric():
    ref = load_reference()
    assert np.isclose(np.linalg.norm(ref.mean[263] - ref.mean[33]), 1.0, atol=1e-4)
    assert abs(ref.mean[1, 0]) < 0.02  # nose tip on the midline
    assert ref.mean[1, 2] < ref.mean[33, 2]  # nose closer to the camera than the eye corners
    assert ref.weights[[13, 14]].max() < np.median(ref.weights)  # lips are not rigid


def test_fill_gaps_interpolates_short_and_holds_long():
    a, b = np.zeros((478, 3), np.float32), np.ones((478, 3), np.float32)
    lm, valid, filled = fill_gaps([None, a, None, b, None, None, None, None, a], max_gap=2)
    assert valid.tolist() == [False, True, False, True, False, False, False, False, True]
    assert filled.tolist() == (~valid).tolist()
    assert np.allclose(lm[0], a) and np.allclose(lm[2], 0.5)  # held start, interpolated short gap
    assert np.allclose(lm[4], b) and np.allclose(lm[7], a)  # long gap: nearest detection held


def test_smoothing_keeps_constant_signals_and_damps_noise():
    rng = np.random.default_rng(0)
    x = np.ones((100, 5, 3), np.float32) + rng.normal(scale=0.1, size=(100, 5, 3)).astype(np.float32)
    y = smooth_landmarks(x, 2.0)
    assert y.shape == x.shape and abs(y.mean() - 1) < 0.01 and y.std() < x.std() / 2


def test_aniportrait_template_loads(tmp_path):
    t = np.zeros((30, 6))
    t[:, 1] = np.linspace(0, 10, 30)  # rotation about MediaPipe's y (up) axis: a head turn
    t[:, 3] = 1.0  # 1 cm to the right
    p = tmp_path / "pose_temp.npy"
    np.save(p, t)
    m = load_motion(p)
    assert len(m) == 30 and m.fps == 30
    yaw = m.euler[:, 0]
    assert abs(abs(yaw[-1]) - 10) < 1e-3 and np.abs(m.euler[:, 1:]).max() < 1e-3
    assert m.translation[0, 0] > 0


@pytest.mark.parametrize("shape", [(30, 5), (0, 6), (30,)])
def test_aniportrait_template_of_wrong_shape_is_refused(tmp_path, shape):
    from a2pcli.errors import InputError

    p = tmp_path / "bad.npy"
    np.save(p, np.zeros(shape))
    with pytest.raises(InputError, match="T, 6"):
        load_aniportrait_template(p)


def test_centimetres_per_face_unit_is_the_reference_fit_onto_metric_meshes():
    """CM_PER_FACE_UNIT is what fit_pose measures a face unit as, on MediaPipe's metric meshes (cm): the weighted
    similarity fit of the reference face onto FaceLandmarker's lmks3d of four faces, averaged."""
    from a2pcli.headpose import CM_PER_FACE_UNIT, umeyama
    from tests import aniportrait_fixtures as fx

    oracle = fx.arrays("landmarker.npz")
    ref = load_reference()
    gl = np.diag([1.0, -1.0, -1.0])  # image axes -> MediaPipe's metric axes
    weights = ref.weights[:468] / ref.weights[:468].sum()
    scales = [float(umeyama(ref.mean[:468] @ gl, oracle[f"img{i}_lmks3d"][None], weights)[2][0]) for i in range(4)]
    assert abs(np.mean(scales) - CM_PER_FACE_UNIT) < 0.01, scales
    assert all(abs(s - CM_PER_FACE_UNIT) < 0.3 for s in scales), scales
