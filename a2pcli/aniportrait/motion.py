"""`--motion aniportrait`: AniPortrait's own speech-to-landmarks path (audio2vid) on a2p's portrait landmarks.

audio2vid needs the reference face's metric mesh `lmks3d` (468 x 3, cm, MediaPipe's canonical face
space) and its pose matrix `trans_mat` (4 x 4, camera space of the 63-degree face-geometry camera).
AniPortrait gets both from MediaPipe FaceLandmarker's face-geometry output, which a2p's mediapipe wheel
cannot produce. `face_geometry` rebuilds them from the portrait's 478 pixel landmarks the way MediaPipe's
`ScreenToMetricSpaceConverter` does (geometry_pipeline.cc, mediapipe 0.10):

1. landmarks -> the camera's near plane (x, y), z scaled like x; y flipped (GL: y up, z towards the viewer);
2. a first weighted similarity fit (Procrustes) to the canonical face gives a scale, which turns the
   relative landmark z into depths; x, y are unprojected along their camera rays; a second fit refines the
   scale, and the landmarks are unprojected again with the product of both scales (the face then has the
   canonical face's size, in cm);
3. a last fit gives the pose matrix (scale ~1, rotation, translation); the metric mesh is the unprojected
   landmarks taken back into canonical space by its inverse.

Projecting the mesh with the matrix at zero delta pose lands exactly on the input landmarks (the
unprojection is along camera rays), whatever canonical face is used. The differences to MediaPipe are
the canonical face and the fit: MediaPipe's canonical model and Procrustes weights do not ship in the
wheel, so the canonical face here is a2p's own reference face (`headpose.load_reference`, face units,
image axes) with its rigid-fit weights (a2p's head-pose fit, `headpose.umeyama`), put into MediaPipe's
canonical frame by one constant similarity: axes flipped to GL, CM_PER_FACE_UNIT centimetres per face
unit, a pitch of PITCH_DEG, the origin moved by ORIGIN_CM. Those four numbers were calibrated on the four
FaceLandmarker outputs of `shared/fixtures/aniportrait/landmarker.npz` (`fit_canonical_alignment`;
tests/test_aniportrait_motion.py recomputes them): the origin matters, because AniPortrait's delta pose
rotates the head about it.

Then, as audio2vid does (`scripts/audio2vid.py` at 7f6593f): Audio2Mesh offsets (30 fps) are added to the
mesh, the head pose comes from Audio2Pose (5 s chunks, rotation x 0.5, smoothed; its style id drawn from
the run's seed where AniPortrait leaves it unseeded), from a head-pose template (mirrored and tiled), or is
zero (--still), and `trans_mat @ M(pose)` projects each frame. Offsets and pose are resampled linearly from
30 fps to the video's rate before projecting. The 10 iris points (not drawn) ride along with the mean
offset of their eyelids; z is given back in a2p's convention (MediaPipe's z times the image width).

    speech = speech_motion(wave16k, weights, seed)                  # once per audio
    lm = speech.landmarks(portrait_lm, width, height, fps, n)       # (n, 478, 3) pixels, per portrait
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from a2pcli.aniportrait import geometry as G
from a2pcli.errors import InputError
from a2pcli.headpose import CM_PER_FACE_UNIT

N_MESH = 468  # MediaPipe's canonical face mesh (AniPortrait's lmks3d); the 10 iris points follow
FOV_Y_DEGREES = G.FOV_Y_DEGREES
NEAR = float(G.NEAR)
FLIP_GL = np.diag([1.0, -1.0, -1.0])  # image axes (x right, y down, z into the screen) <-> GL axes

# a2p's reference face (face units, image axes) -> MediaPipe's canonical face space (cm, GL axes):
#     canonical = CM_PER_FACE_UNIT * Rx(PITCH_DEG) @ FLIP_GL @ reference + ORIGIN_CM
# calibrated on the landmarker fixtures (see the module docstring; CM_PER_FACE_UNIT is a2p's own, from
# headpose); yaw, roll and the x offset, zero by symmetry, came out below 0.2 degrees and 0.01 cm.
PITCH_DEG = -1.77
ORIGIN_CM = (0.0, -0.57, 4.23)

MIN_SAMPLES = 1600  # 0.1 s at 16 kHz: wav2vec2's convolutions need a few frames


# ---- the reference face's metric mesh and pose matrix ------------------------------------------------

@dataclass(frozen=True)
class FaceGeometry:
    """MediaPipe face geometry of one face in a width x height image."""

    mesh: np.ndarray  # (478, 3) float64, canonical metric space (cm); [:468] is AniPortrait's lmks3d
    trans_mat: np.ndarray  # (4, 4) pose matrix (scale * rotation | translation), camera space, cm
    width: int
    height: int
    depth_offset: float  # mean near-plane z of the input landmarks (to give z back in a2p's convention)
    total_scale: float  # the product of the two scale iterations (ditto)

    @property
    def lmks3d(self) -> np.ndarray:
        return self.mesh[:N_MESH]


def rotation_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def canonical_face(ref_mean: np.ndarray, scale: float = CM_PER_FACE_UNIT, pitch_deg: float = PITCH_DEG,
                   origin=ORIGIN_CM) -> np.ndarray:
    """(478, 3) a2p reference face (face units, image axes) -> (478, 3) canonical face in cm, GL axes."""
    rot = rotation_x(pitch_deg) @ FLIP_GL
    return scale * np.asarray(ref_mean, np.float64) @ rot.T + np.asarray(origin, np.float64)


def _near_plane(width: int, height: int) -> tuple[float, float]:
    """(width, height) of the camera frustum at the near plane (PerspectiveCameraFrustum)."""
    h = 2.0 * NEAR * math.tan(0.5 * math.radians(FOV_Y_DEGREES))
    return width * h / height, h


def _similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """4 x 4 weighted similarity taking src (N, 3) onto dst (N, 3): a2p's rigid fit (headpose.umeyama),
    the same weighted orthogonal Procrustes problem MediaPipe's solver solves."""
    from a2pcli.headpose import umeyama

    r, t, s = umeyama(np.asarray(src, np.float64), np.asarray(dst, np.float64)[None], np.asarray(weights))
    m = np.eye(4)
    m[:3, :3] = float(s[0]) * r[0].astype(np.float64)
    m[:3, 3] = t[0]
    return m


def _unproject(near: np.ndarray, depth_offset: float, scale: float) -> np.ndarray:
    """Near-plane points (N, 3) -> camera space (GL): z becomes a depth (MoveAndRescaleZ), x, y move along
    the camera rays to it (UnprojectXY), then z is negated (ChangeHandedness)."""
    out = near.copy()
    out[:, 2] = (out[:, 2] - depth_offset + NEAR) / scale
    out[:, :2] *= out[:, 2:3] / NEAR
    out[:, 2] *= -1.0
    return out


def screen_to_metric(landmarks: np.ndarray, width: int, height: int, canonical: np.ndarray,
                     weights: np.ndarray) -> FaceGeometry:
    """MediaPipe's screen-to-metric conversion of (N, 3) pixel landmarks (z = MediaPipe z x width) against a
    canonical face (N, 3, cm) with fit weights (N,). Returns the metric mesh of all N points."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 2 or lm.shape[1] != 3 or lm.shape[0] != len(canonical):
        raise ValueError(f"landmarks of shape {lm.shape}, canonical face of {len(canonical)} points")
    wn, hn = _near_plane(width, height)
    near = np.empty_like(lm)
    near[:, 0] = lm[:, 0] / width * wn - 0.5 * wn  # ProjectXY on normalised coordinates
    near[:, 1] = (1.0 - lm[:, 1] / height) * hn - 0.5 * hn
    near[:, 2] = lm[:, 2] / width * wn
    depth_offset = float(near[:, 2].mean())
    first = near * np.array([1.0, 1.0, -1.0])  # 1st iteration: XY not unprojected
    s1 = float(np.linalg.norm(_similarity(canonical, first, weights)[:3, 0]))
    s2 = float(np.linalg.norm(_similarity(canonical, _unproject(near, depth_offset, s1), weights)[:3, 0]))
    total = s1 * s2
    metric = _unproject(near, depth_offset, total)
    pose = _similarity(canonical, metric, weights)
    mesh = (np.linalg.inv(pose) @ np.c_[metric, np.ones(len(metric))].T).T[:, :3]
    return FaceGeometry(mesh, pose, int(width), int(height), depth_offset, total)


def face_geometry(landmarks: np.ndarray, width: int, height: int, ref=None) -> FaceGeometry:
    """AniPortrait's (lmks3d, trans_mat) equivalent for a portrait: (478, 3) a2p landmarks in pixels of a
    width x height image -> FaceGeometry (mesh (478, 3) cm, trans_mat (4, 4)). `ref`: headpose.FaceReference
    (default: the shipped one)."""
    if ref is None:
        from a2pcli.headpose import load_reference

        ref = load_reference()
    return screen_to_metric(landmarks, width, height, canonical_face(ref.mean), ref.weights)


def fit_canonical_alignment(meshes: list[np.ndarray], oracle: list[np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    """Calibration: meshes (468, 3) built with some canonical face, and FaceLandmarker's lmks3d for the same
    landmarks -> (scale, rotation (3, 3), translation (3,)) of the mean similarity taking the first onto the
    second (rotations averaged by projecting their sum onto SO(3)). Compose it with the canonical face used."""
    from a2pcli.headpose import umeyama

    uniform = np.full(N_MESH, 1.0 / N_MESH)
    fits = [umeyama(np.asarray(m, np.float64)[:N_MESH], np.asarray(o, np.float64)[None], uniform)
            for m, o in zip(meshes, oracle)]
    u, _, vt = np.linalg.svd(sum(f[0][0].astype(np.float64) for f in fits))
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return (float(np.mean([f[2][0] for f in fits])), rot, np.mean([f[1][0] for f in fits], 0))


def pose_matrix(geom: FaceGeometry, pose: np.ndarray) -> np.ndarray:
    """trans_mat @ M(pose): the delta pose (6,) applied first, in canonical space (project_points)."""
    return geom.trans_mat @ G.euler_and_translation_to_matrix(pose[:3], pose[3:])


def project(geom: FaceGeometry, meshes: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """(T, N, 3) canonical meshes posed by (T, 6) delta poses -> (T, N, 3) pixels of the geometry's image:
    x, y as AniPortrait's project_points computes them, z in a2p's convention (MediaPipe z x width, the
    input's own z at zero pose)."""
    proj = G.perspective_matrix(geom.width / geom.height).reshape(4, 4).T
    wn, _ = _near_plane(geom.width, geom.height)
    out = np.empty(meshes.shape, np.float64)
    for i, frame in enumerate(meshes):
        hom = np.hstack([frame, np.ones((len(frame), 1))])
        cam = hom @ pose_matrix(geom, poses[i]).T
        out[i, :, :2] = G.to_pixels(cam @ proj, [geom.height, geom.width])
        depth = -cam[:, 2]  # inverse of _unproject's z
        out[i, :, 2] = (depth * geom.total_scale - NEAR + geom.depth_offset) / wn * geom.width
    return out


# ---- head-pose templates -------------------------------------------------------------------------------

def _alignment() -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, rotation, origin) of canonical_face: canonical = scale * rotation @ face_units + origin."""
    return CM_PER_FACE_UNIT, rotation_x(PITCH_DEG) @ FLIP_GL, np.asarray(ORIGIN_CM, np.float64)


def pose_from_motion(motion) -> np.ndarray:
    """An a2p Motion (.pose file) -> AniPortrait head-pose template (T, 6) at 30 fps: each frame's pose
    relative to the first, in the canonical face space (Euler 'xyz' degrees, cm), as generate_ref_pose.py
    computes inv(T_0) @ T_i; the scale change is dropped, the motion linearly resampled to 30 fps."""
    from a2pcli.aniportrait.audio import FPS

    k, rc, origin = _alignment()
    rot = np.asarray(motion.rotation, np.float64)
    trans = np.asarray(motion.translation, np.float64)
    scale = np.maximum(np.asarray(motion.scale, np.float64), 1e-6)
    rel_r = np.einsum("ji,tjk->tik", rot[0], rot)  # R_0^T R_i (object frame)
    rel_t = (trans - trans[0]) @ rot[0] / scale[0]  # R_0^T (t_i - t_0) / s_0, face units
    mats = np.tile(np.eye(4), (len(rot), 1, 1))
    mats[:, :3, :3] = rc @ rel_r @ rc.T  # conjugated into the canonical face space
    mats[:, :3, 3] = k * rel_t @ rc.T + origin - np.einsum("tij,j->ti", mats[:, :3, :3], origin)
    pose = G.matrices_to_pose(mats)
    n_out = max(1, int(round(len(pose) * FPS / float(motion.fps))))
    src_t = np.arange(len(pose)) / float(motion.fps)
    dst_t = np.arange(n_out) / FPS
    return np.stack([np.interp(dst_t, src_t, pose[:, c]) for c in range(6)], 1)


def load_pose_template(path: Path) -> np.ndarray:
    """--pose for --motion aniportrait: an AniPortrait .npy template as it is (T, 6, 30 fps), or an a2p .pose
    file converted (`pose_from_motion`)."""
    from a2pcli.motion import load_aniportrait_template, load_motion

    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        load_aniportrait_template(path)  # its shape and readability checks
        return np.asarray(np.load(path, allow_pickle=False), np.float64)
    return pose_from_motion(load_motion(path))


# ---- speech -> per-frame landmarks ---------------------------------------------------------------------

def style_id(seed: int) -> int:
    """Audio2Pose's style id for a run's seed: audio2vid's random.randint(0, 99), from a seeded generator."""
    from a2pcli.aniportrait.audio import STYLE_IDS

    return random.Random(int(seed)).randint(0, STYLE_IDS - 1)


def resample(x: np.ndarray, fps_in: float, fps_out: float, n: int) -> np.ndarray:
    """(T, ...) at fps_in -> (n, ...) at fps_out, linear in time, the last frame held past the end."""
    x = np.asarray(x, np.float64)
    u = np.clip(np.arange(n) * (fps_in / fps_out), 0, len(x) - 1)
    i0 = np.floor(u).astype(int)
    i1 = np.minimum(i0 + 1, len(x) - 1)
    w = (u - i0).reshape((-1,) + (1,) * (x.ndim - 1))
    return x[i0] * (1 - w) + x[i1] * w


def _iris_offsets(offsets: np.ndarray) -> np.ndarray:
    """(T, 468, 3) mesh offsets -> (T, 10, 3): each iris point moves with the mean of its eyelids."""
    from a2pcli import facemesh as fm

    right = np.concatenate([fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER])
    left = np.concatenate([fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER])
    r = offsets[:, right].mean(1, keepdims=True)
    lft = offsets[:, left].mean(1, keepdims=True)
    return np.concatenate([np.repeat(r, len(fm.RIGHT_IRIS), 1), np.repeat(lft, len(fm.LEFT_IRIS), 1)], 1)


@dataclass
class SpeechMotion:
    """AniPortrait's motion for one audio, at 30 fps, independent of the portrait."""

    offsets: np.ndarray  # (T, 468, 3) Audio2Mesh vertex offsets, cm (already x expression_scale)
    pose: np.ndarray  # (T, 6) delta head pose, Euler 'xyz' degrees + cm (already x pose_scale)
    id_seed: int | None  # Audio2Pose style id (None: the pose came from a template or --still)
    notes: list[str] = field(default_factory=list)
    fps: float = 30.0

    def landmarks(self, landmarks: np.ndarray, width: int, height: int, fps: float, n: int,
                  ref=None) -> np.ndarray:
        """(478, 3) portrait landmarks in pixels of a width x height image -> (n, 478, 3) float32 pixels at
        `fps`: 468 projected mesh points, then the 10 iris points."""
        geom = face_geometry(landmarks, width, height, ref)
        offsets = resample(self.offsets, self.fps, fps, n)
        pose = resample(self.pose, self.fps, fps, n)
        moved = np.concatenate([offsets, _iris_offsets(offsets)], 1) + geom.mesh[None]
        return project(geom, moved, pose).astype(np.float32)

    def targets(self, landmarks: np.ndarray, width: int, height: int, fps: float, n: int, ref=None):
        """retarget.FaceTargets for the renderer: the landmarks, with a2p's head-pose fit of each frame."""
        from a2pcli.headpose import fit_pose, load_reference
        from a2pcli.retarget import FaceTargets

        ref = ref if ref is not None else load_reference()
        lm = self.landmarks(landmarks, width, height, fps, n, ref)
        r, t, s = fit_pose(lm, ref)
        return FaceTargets(lm, r, t, s)


def _device(device: str) -> str:
    import torch

    if device in ("auto", "cuda") or device.startswith("cuda:"):
        if torch.cuda.is_available():
            return "cuda" if device == "auto" else device
    return "cpu"


def speech_motion(wave: np.ndarray, weights=None, seed: int = 0, template: np.ndarray | None = None,
                  still: bool = False, pose_scale: float = 1.0, expression_scale: float = 1.0,
                  device: str = "cpu", reporter=None) -> SpeechMotion:
    """16 kHz mono speech (S,) -> SpeechMotion: Audio2Mesh offsets and the head pose (Audio2Pose with style
    `style_id(seed)`, or `template` (T, 6) at 30 fps mirrored and tiled as audio2vid does, or zero when
    `still`), 30 fps. `weights`: an AniPortraitWeights, a pretrained_model folder, or None (the pulled model).
    The audio models run on `device` ("auto": a GPU when there is one) in float32."""
    import torch

    from a2pcli.aniportrait import audio as A
    from a2pcli.aniportrait.weights import AniPortraitWeights, open_weights

    wave = np.asarray(wave, np.float32).reshape(-1)
    if len(wave) < MIN_SAMPLES:
        raise InputError(f"the speech is {len(wave) / A.SAMPLE_RATE:.3f} s long, too short for AniPortrait's "
                         "audio models", subject="audio", remedy="give at least 0.1 s of speech")
    w = weights if isinstance(weights, AniPortraitWeights) else open_weights(None if weights is None else str(weights))
    dev = _device(device)
    config = w.config("wav2vec2_config")
    seq_len = A.frame_count(len(wave))
    x = torch.from_numpy(A.normalize_wave(wave))[None].to(dev)
    notes: list[str] = []
    with torch.no_grad():
        a2m = A.Audio2Mesh.from_checkpoint(w.state_dict("audio2mesh.pt", expected=None), config,
                                           dtype=torch.float32).to(dev)
        offsets = a2m(x, seq_len)[0].double().cpu().numpy().reshape(seq_len, N_MESH, 3)
        del a2m
        id_seed = None
        if still:
            pose = np.zeros((seq_len, 6))
        elif template is not None:
            template = np.asarray(template, np.float64)
            pose = G.tile_template(template, seq_len)
            if len(template) < seq_len:
                notes.append("the head-pose template is shorter than the audio: it is played back and forth")
        else:
            id_seed = style_id(seed)
            if reporter is not None:
                reporter.info(f"AniPortrait head pose: audio2pose style {id_seed} (from seed {seed})")
            a2p = A.Audio2Pose.from_checkpoint(w.state_dict("audio2pose.pt", expected=None), config,
                                               dtype=torch.float32).to(dev)
            pose = A.pose_from_audio(a2p, x, seq_len, id_seed).astype(np.float64)
            del a2p
    return SpeechMotion(offsets * expression_scale, pose * pose_scale, id_seed, notes)


def aniportrait_landmarks(landmarks: np.ndarray, width: int, height: int, wave: np.ndarray, fps: float, n: int,
                          seed: int = 0, weights=None, template: np.ndarray | None = None, still: bool = False,
                          device: str = "cpu") -> np.ndarray:
    """The whole path in one call: portrait landmarks (478, 3) pixels + 16 kHz speech -> (n, 478, 3) pixels
    at `fps`."""
    motion = speech_motion(wave, weights, seed, template, still, device=device)
    return motion.landmarks(landmarks, width, height, fps, n)
