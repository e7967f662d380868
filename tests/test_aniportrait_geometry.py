"""AniPortrait landmark geometry, landmark drawing and face landmarks against the golden fixtures
(design note §6, rungs 11 and 12; fixture README §4).

Rung 11 (geometry, drawing) is exact: every array compares bit-equal (the README allows 1e-12 for
geometry; measured 0), and every landmark image pixel-equal. Drawing was measured pixel-exact (100 % of
pixels, all six cases and the four reference-pose images) with this environment's OpenCV 4.11.0, although
the oracle drew with 4.8.1.78.

Rung 12 (landmarker) compares a2p's own MediaPipe path (legacy `solutions.face_mesh`, refine_landmarks,
478 points; `a2pcli.landmarks.FaceMeshDetector`) with AniPortrait's `LMKExtractor` (FaceLandmarker v2
`.task`, not available here). What can be reproduced and is tested:
- the input preparation (PIL RGB -> BGR -> cv2.resize to 512 x 512): sha256-equal to the oracle's;
- the 478 2D landmarks, within a measured tolerance: the two are different networks. Measured at
  512 x 512 over the four images: mean error 1.0 - 2.3 px, max 3.3 - 6.2 px; relative to the face-box
  diagonal (170 - 415 px) mean 0.38 - 0.79 % and max 1.4 - 2.9 % (the 2.9 % is the smallest face,
  liveportrait_s9). Bounds: mean <= 1.5 %, max <= 5 % of the diagonal;
- the reference-pose image drawn from them: >= 98 % of its line pixels lie within 7 px of the oracle's
  lines and vice versa (measured 100 % at 7 px for all four; 94.5 - 100 % at 3 px);
- z only loosely (legacy and v2 share the z convention: correlation measured >= 0.995; bound 0.98).
Not reproducible without the `.task` file, so not tested against a2p's path: `lmks3d` (the face-geometry
pipeline's canonical-space mesh needs the canonical face model and Procrustes weights bundled in the
task), `trans_mat`, and the 51 blendshapes. Their mutual consistency is tested instead: projecting each
image's `lmks3d` with its `trans_mat` reproduces its 2D landmarks (fixture README: within 0.021 px).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from a2pcli.aniportrait import draw as D
from a2pcli.aniportrait import geometry as G
from tests import aniportrait_fixtures as fx
from tests.conftest import media


@pytest.fixture(scope="module")
def geo():
    return fx.arrays("geometry.npz")


def same(actual, expected, what: str) -> None:
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    if not np.array_equal(a, e):
        fx.close(a, e, 1e-12, what)  # the README's geometry bound, reported with the worst element


# ---- rung 11: geometry ------------------------------------------------------------------------------

@pytest.mark.parametrize("tag, aspect", [("1", 1.0), ("0p75", 480 / 640), ("1p333", 640 / 480)])
def test_perspective_matrix(geo, tag, aspect):
    out = G.perspective_matrix(aspect)
    assert out.dtype == np.float32
    # float64 tan and divisions rounded to float32: vectorised tan (numpy's AVX-512 SVML) is within
    # 4 float64 ulp, which can move the float32 rounding by at most one float32 ulp
    np.testing.assert_array_max_ulp(out, geo[f"perspective_aspect_{tag}"], maxulp=1)


def test_euler_to_matrix(geo):
    out = np.stack([G.euler_and_translation_to_matrix(e, t) for e, t in zip(geo["euler_in"], geo["trans_in"])])
    same(out, geo["e2m_out"], "e2m")


@pytest.mark.parametrize("prefix, source", [("m2e", "e2m_out"), ("scaled_m2e", "scaled_mats_in")])
def test_matrix_to_euler(geo, prefix, source):
    """Rotation matrices and uniformly scaled ones (vid2vid's case: MediaPipe matrices carry a scale)."""
    pose = G.matrices_to_pose(geo[source])
    same(pose[:, :3], geo[f"{prefix}_euler_out"], f"{prefix} euler")
    same(pose[:, 3:], geo[f"{prefix}_trans_out"], f"{prefix} translation")


def test_matrix_to_euler_of_a_mediapipe_matrix(geo):
    euler, trans = G.matrix_to_euler_and_translation(geo["mediapipe_mat_in"])
    same(euler, geo["mediapipe_m2e_euler_out"], "euler")
    same(trans, geo["mediapipe_m2e_trans_out"], "translation")


def test_scaled_matrices_are_not_orthonormalised(geo):
    """Negative control: taking the orthonormal part first (what scipy >= 1.15 does) moves the angles of
    the scaled matrices by far more than rounding, so the test above pins scipy 1.11's behaviour."""
    worst = 0.0
    for m, expected in zip(geo["scaled_mats_in"], geo["scaled_m2e_euler_out"]):
        u, _, vt = np.linalg.svd(m[:3, :3])
        euler = G.euler_xyz_from_quat(G.quat_from_matrix(u @ vt))
        worst = max(worst, float(np.abs(euler - expected).max()))
    assert worst > 0.1


@pytest.mark.parametrize("hw", ["512x512", "480x640", "64x128"])
def test_project_points(geo, hw):
    """project_points(mesh, trans_mat, pose, [H, W]): the argument order is [height, width]."""
    h, w = map(int, hw.split("x"))
    out = G.project_points(geo["mesh_in"], geo["trans_mat_in"], geo["pose_seq_in"], [h, w])
    same(out, geo[f"project_points_{hw}"], f"project_points {hw}")
    posed = G.landmarks_2d(geo["mesh_in"] - geo["mesh_in"][0], geo["mesh_in"][0], geo["trans_mat_in"],
                           geo["pose_seq_in"], width=w, height=h)
    np.testing.assert_allclose(posed, out, rtol=0, atol=1e-9)


def test_project_points_with_trans(geo):
    out = G.project_points_with_trans(geo["mesh_in"], geo["per_frame_mats_in"], [480, 640])
    same(out, geo["project_points_with_trans_480x640"], "project_points_with_trans")


@pytest.mark.parametrize("window", [3, 5, 7])
def test_smoothing(geo, window):
    same(G.smooth_pose_seq(geo["smooth_in"], window), geo[f"smooth_w{window}"], f"smooth w{window}")


@pytest.mark.parametrize("length", [30, 71, 72, 150, 315])
def test_template_mirror_and_tile(geo, length):
    """A 37-frame template loops ping-pong (72 frames) and is tiled to the frame count."""
    assert len(G.mirror_template(geo["template_in"])) == 2 * 37 - 2
    same(G.tile_template(geo["template_in"], length), geo[f"template_tiled_{length}"], f"template {length}")


@pytest.mark.parametrize("i", range(4))
def test_landmarker_mesh_and_matrix_are_consistent(i):
    """The oracle's lmks3d posed by its trans_mat (zero delta pose) lands on its 2D landmarks."""
    lm = fx.arrays("landmarker.npz")
    proj = G.project_points(lm[f"img{i}_lmks3d"][None], lm[f"img{i}_trans_mat"], np.zeros((1, 6)), [512, 512])[0]
    err = np.abs(proj - lm[f"img{i}_lmks"][:468, :2] * 512).max()
    assert err < 0.03, f"img{i}: {err:.4f} px"


# ---- rung 11: drawing -----------------------------------------------------------------------------------

DRAW_CASES = {
    "proj512": ((512, 512), False),
    "proj640x480": ((640, 480), False),
    "proj128x64": ((128, 64), False),
    "normed_lmks512": ((512, 512), True),
    "normed_random_oob": ((512, 512), True),
    "pixels_near_int_384x256": ((384, 256), False),
}


def pixels_equal(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.uint8, what
    differ = int(np.any(actual != expected, axis=2).sum())
    lit = int(np.any(expected > 0, axis=2).sum())
    assert differ == 0, f"{what}: {differ} pixels differ ({lit} lit in the oracle's image)"


@pytest.mark.parametrize("case", DRAW_CASES)
def test_draw_landmarks(case):
    z = fx.arrays("drawing.npz")
    size, normed = DRAW_CASES[case]
    info = fx.summary()["fixtures"]["drawing"]["info"]["cases"][case]
    assert tuple(info["image_size_wh"]) == size and info["normed"] == normed
    pixels_equal(D.draw_landmarks(size, z[f"{case}_keypoints"], normed), z[f"{case}_image"], case)


@pytest.mark.parametrize("i", range(4))
def test_reference_pose_images(i):
    """audio2vid's ref_pose: the landmarker's normalised landmarks, cast to float32, drawn at 512 x 512."""
    lm = fx.arrays("landmarker.npz")
    out = D.draw_landmarks((512, 512), lm[f"img{i}_lmks"].astype(np.float32), normed=True)
    pixels_equal(out, lm[f"img{i}_ref_pose_512"], f"img{i}")


def test_drawing_order_matters(monkeypatch):
    """Negative control: the oracle's images pin the edge order (overlapping edges overwrite)."""
    z = fx.arrays("drawing.npz")
    monkeypatch.setattr(D, "EDGES", D.EDGES[::-1])
    out = D.draw_landmarks((512, 512), z["normed_random_oob_keypoints"], True)
    assert np.any(out != z["normed_random_oob_image"])


def test_float32_rounding_matters():
    """Negative control: near-integer pixel inputs land on other canvas pixels without the protobuf
    float32 rounding."""
    z = fx.arrays("drawing.npz")
    kp = z["pixels_near_int_384x256_keypoints"]
    px, _ = D._canvas_pixels(kp, (384, 256), normed=False)
    v = kp[:, :2] / np.array([384, 256])
    assert np.any(np.floor(v * D.CANVAS).astype(int) != px)


def test_edge_sets():
    assert len(D.EDGES) == 26 + 16 + 8 + 16 + 8 + 40
    for name, order in D.FROZENSET_ORDER.items():
        assert order == list(frozenset(D.SOURCE_ORDER[name])), name  # CPython's order for int tuples


@pytest.mark.parametrize("v", [0.0, -0.0, 1.0, 1 + 1e-10, 1 + 1e-8, -1e-300, 0.5, 0.9999999, float("nan"),
                               float("inf"), 5e-324])
def test_in_range_rule(v):
    """The vectorised rule equals mediapipe's per-value test (math.isclose slack at 1, none at 0)."""
    kp = np.full((D.N_POINTS_NEEDED, 2), 0.5)
    kp[0] = [v, 0.5]
    _, ok = D._canvas_pixels(kp, (512, 512), normed=True)
    x = float(np.float32(v))
    assert bool(ok[0]) == ((x > 0 or math.isclose(0, x)) and (x < 1 or math.isclose(1, x)))


# ---- rung 12: a2p's MediaPipe landmarks vs AniPortrait's landmarker ----------------------------------------

IMAGES = ["liveportrait_s12.jpg", "liveportrait_s9.jpg", "sadtalker_happy.png", "sadtalker_art_0.png"]


def _prepared(i: int) -> np.ndarray:
    """audio2vid's reference preparation: PIL -> RGB -> BGR -> cv2.resize to 512 x 512 (BGR)."""
    import cv2
    from PIL import Image

    rgb = np.array(Image.open(media(IMAGES[i])).convert("RGB"))
    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (512, 512))


@pytest.fixture(scope="module")
def a2p_landmarks():
    """{i: (478, 3) float32 normalised} from a2p's FaceMeshDetector on the prepared images."""
    import cv2

    from a2pcli.landmarks import FaceMeshDetector

    out = {}
    with FaceMeshDetector(video=False, max_faces=1) as det:
        for i in range(len(IMAGES)):
            faces = det.detect(cv2.cvtColor(_prepared(i), cv2.COLOR_BGR2RGB))
            assert faces, f"{IMAGES[i]}: no face"
            out[i] = faces[0] / np.float32(512)
    return out


@pytest.mark.parametrize("i", range(4))
def test_landmarker_input_preparation(i):
    info = fx.summary()["fixtures"]["landmarker"]["info"]["images"][f"img{i}"]
    assert info["file"].endswith(IMAGES[i])
    assert hashlib.sha256(media(IMAGES[i]).read_bytes()).hexdigest() == info["file_sha256"]
    digest = hashlib.sha256(_prepared(i).tobytes()).digest()
    assert digest == bytes(fx.arrays("landmarker.npz")[f"img{i}_input_bgr_sha256"])


@pytest.mark.parametrize("i", range(4))
def test_landmarks_match_within_tolerance(a2p_landmarks, i):
    ref = fx.arrays("landmarker.npz")[f"img{i}_lmks"]
    ours = a2p_landmarks[i]
    assert ours.shape == ref.shape == (478, 3)
    err = np.linalg.norm((ours[:, :2] - ref[:, :2]) * 512, axis=1)
    box = ref[:, :2].max(0) - ref[:, :2].min(0)
    diag = float(np.hypot(*box)) * 512
    assert err.mean() <= 0.015 * diag, f"mean {err.mean():.2f} px, face diagonal {diag:.0f} px"
    assert err.max() <= 0.05 * diag, f"max {err.max():.2f} px at {int(err.argmax())}, face diagonal {diag:.0f} px"
    assert np.corrcoef(ours[:, 2], ref[:, 2])[0, 1] >= 0.98


@pytest.mark.parametrize("i", range(4))
def test_reference_pose_from_a2p_landmarks(a2p_landmarks, i):
    import cv2

    ref = fx.arrays("landmarker.npz")[f"img{i}_ref_pose_512"].any(axis=2)
    ours = D.draw_landmarks((512, 512), a2p_landmarks[i], normed=True).any(axis=2)
    near = np.ones((15, 15), np.uint8)  # within 7 px

    def covered(a, b):
        return (a & (cv2.dilate(b.astype(np.uint8), near) > 0)).sum() / a.sum()

    assert covered(ours, ref) >= 0.98 and covered(ref, ours) >= 0.98
