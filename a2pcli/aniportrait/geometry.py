"""AniPortrait's landmark geometry: MediaPipe's face-geometry camera, projection of canonical-space
meshes to pixels, Euler <-> matrix conversions, pose smoothing and head-pose templates.

Reproduces AniPortrait commit 7f6593f (`src/utils/pose_util.py`, the template and smoothing code of
`scripts/audio2vid.py` / `generate_ref_pose.py`) with the same floating-point operations, so results
are bit-identical or within 1e-12. The Euler conversions restate the algorithms of scipy 1.11.4 (the
version AniPortrait's environment resolved): its `Rotation.from_matrix` builds the quaternion straight
from the matrix entries, so a uniformly scaled matrix (MediaPipe's pose matrices carry a scale) gives a
slightly different rotation than its orthonormal part. scipy >= 1.15 orthonormalises first and would
shift such angles by up to degrees; nothing here imports scipy.

Conventions:
    mesh        (T, N, 3) float64, MediaPipe canonical metric space (cm), N = 468
    trans_mat   (4, 4) MediaPipe facial transformation matrix (scale * rotation | translation)
    pose        (T, 6): Euler 'xyz' (extrinsic) degrees, then translation in cm; a delta applied in
                canonical space before `trans_mat`
    image_shape [height, width] (AniPortrait's argument order); pixels are x right, y down
"""

from __future__ import annotations

import math

import numpy as np

FOV_Y_DEGREES = 63.0  # MediaPipe FaceGeometryEnvGeneratorCalculator: vertical field of view ...
NEAR = 1  # ... near plane (cm) ...
FAR = 10000  # ... and far plane (cm, 100 m)


# ---- camera and projection ------------------------------------------------------------------------

def perspective_matrix(aspect_ratio: float) -> np.ndarray:
    """(16,) float32, column-major OpenGL perspective with the Y axis flipped for a top-left origin
    (pose_util.create_perspective_matrix). aspect_ratio = width / height."""
    m = np.zeros(16, dtype=np.float32)
    f = 1.0 / np.tan(np.pi / 180.0 * FOV_Y_DEGREES / 2.0)
    denom = 1.0 / (NEAR - FAR)
    m[0] = f / aspect_ratio
    m[5] = f
    m[10] = (NEAR + FAR) * denom
    m[11] = -1.0
    m[14] = 1.0 * FAR * NEAR * denom
    m[5] *= -1.0
    return m


def to_pixels(homogeneous: np.ndarray, image_shape) -> np.ndarray:
    """(N, 4) clip coordinates -> (N, 2) pixels."""
    xy = homogeneous[:, :2] / homogeneous[:, 3, np.newaxis]
    xy[:, 0] = (xy[:, 0] + 1) * 0.5 * image_shape[1]
    xy[:, 1] = (xy[:, 1] + 1) * 0.5 * image_shape[0]
    return xy


def project_points_with_trans(mesh: np.ndarray, matrices: np.ndarray, image_shape) -> np.ndarray:
    """(T, N, 3) canonical meshes, (T, 4, 4) per-frame pose matrices -> (T, N, 2) pixels."""
    proj = perspective_matrix(image_shape[1] / image_shape[0]).reshape(4, 4).T
    out = np.zeros((mesh.shape[0], mesh.shape[1], 2))
    for i, frame in enumerate(mesh):
        hom = np.hstack([frame, np.ones((frame.shape[0], 1))])
        out[i] = to_pixels(hom @ matrices[i].T @ proj, image_shape)
    return out


def project_points(mesh: np.ndarray, trans_mat: np.ndarray, pose: np.ndarray, image_shape) -> np.ndarray:
    """(T, N, 3) canonical meshes -> (T, N, 2) pixels: frame i is posed by trans_mat @ M(pose[i])
    (the delta pose first, in canonical space) and projected with MediaPipe's camera."""
    proj = perspective_matrix(image_shape[1] / image_shape[0]).reshape(4, 4).T
    out = np.zeros((mesh.shape[0], mesh.shape[1], 2))
    for i, frame in enumerate(mesh):
        hom = np.hstack([frame, np.ones((frame.shape[0], 1))])
        posed = trans_mat @ euler_and_translation_to_matrix(pose[i][:3], pose[i][3:])
        out[i] = to_pixels(hom @ posed.T @ proj, image_shape)
    return out


# ---- rotations (scipy 1.11.4's algorithms, quaternions as x, y, z, w) --------------------------------

def _compose(p, q):
    """Quaternion product p * q."""
    cx = p[1] * q[2] - p[2] * q[1]
    cy = p[2] * q[0] - p[0] * q[2]
    cz = p[0] * q[1] - p[1] * q[0]
    return (p[3] * q[0] + q[3] * p[0] + cx,
            p[3] * q[1] + q[3] * p[1] + cy,
            p[3] * q[2] + q[3] * p[2] + cz,
            p[3] * q[3] - p[0] * q[0] - p[1] * q[1] - p[2] * q[2])


def _elementary(axis: int, angle: float):
    q = [0.0, 0.0, 0.0, math.cos(angle / 2)]
    q[axis] = math.sin(angle / 2)
    return tuple(q)


def quat_from_euler_xyz(degrees) -> tuple:
    """Rotation.from_euler('xyz', degrees, degrees=True): extrinsic x, then y, then z."""
    a = [float(v) * (np.pi / 180.0) for v in degrees]  # np.deg2rad
    q = _elementary(0, a[0])
    for axis in (1, 2):
        q = _compose(_elementary(axis, a[axis]), q)
    return q


def matrix_from_quat(q) -> np.ndarray:
    """Rotation.as_matrix for one quaternion -> (3, 3)."""
    x, y, z, w = q
    x2, y2, z2, w2 = x * x, y * y, z * z, w * w
    xy, zw, xz, yw, yz, xw = x * y, z * w, x * z, y * w, y * z, x * w
    return np.array([[x2 - y2 - z2 + w2, 2 * (xy - zw), 2 * (xz + yw)],
                     [2 * (xy + zw), -x2 + y2 - z2 + w2, 2 * (yz - xw)],
                     [2 * (xz - yw), 2 * (yz + xw), -x2 - y2 + z2 + w2]])


def quat_from_matrix(m) -> tuple:
    """Rotation.from_matrix as scipy 1.11.4 computes it: the quaternion from the largest of the diagonal
    and the trace, normalised; no orthonormalisation (a scaled matrix is not rescaled first)."""
    m = [[float(v) for v in row] for row in np.asarray(m)[:3, :3]]
    decision = [m[0][0], m[1][1], m[2][2], m[0][0] + m[1][1] + m[2][2]]
    choice = 0
    for n in range(1, 4):  # first maximum, as _argmax4
        if decision[n] > decision[choice]:
            choice = n
    q = [0.0] * 4
    if choice != 3:
        i = choice
        j = (i + 1) % 3
        k = (j + 1) % 3
        q[i] = 1 - decision[3] + 2 * m[i][i]
        q[j] = m[j][i] + m[i][j]
        q[k] = m[k][i] + m[i][k]
        q[3] = m[k][j] - m[j][k]
    else:
        q = [m[2][1] - m[1][2], m[0][2] - m[2][0], m[1][0] - m[0][1], 1 + decision[3]]
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return tuple(v / norm for v in q)


def euler_xyz_from_quat(q) -> np.ndarray:
    """Rotation.as_euler('xyz', degrees=True) (the quaternion method of Bernardes & Viollet 2022):
    (3,) degrees. At gimbal lock the third angle is set to zero, as scipy does (without its warning)."""
    i, j, k, sign = 0, 1, 2, 1  # extrinsic 'xyz': an even permutation
    a = q[3] - q[j]
    b = q[i] + q[k] * sign
    c = q[j] + q[3]
    d = q[k] * sign - q[i]
    angles = [0.0, 2 * math.atan2(math.hypot(c, d), math.hypot(a, b)), 0.0]
    half_sum, half_diff = math.atan2(b, a), math.atan2(d, c)
    if abs(angles[1]) <= 1e-7:
        angles[0] = 2 * half_sum
    elif abs(angles[1] - math.pi) <= 1e-7:
        angles[0] = 2 * half_diff * -1
    else:
        angles[0] = half_sum - half_diff
        angles[2] = half_sum + half_diff
    angles[2] *= sign
    angles[1] -= math.pi / 2
    for n in range(3):
        if angles[n] < -math.pi:
            angles[n] += 2 * math.pi
        elif angles[n] > math.pi:
            angles[n] -= 2 * math.pi
    return np.array(angles) * (180.0 / np.pi)  # np.rad2deg


def euler_and_translation_to_matrix(euler_deg, translation) -> np.ndarray:
    """(3,) Euler 'xyz' degrees, (3,) translation -> (4, 4)."""
    m = np.eye(4)
    m[:3, :3] = matrix_from_quat(quat_from_euler_xyz(euler_deg))
    m[:3, 3] = translation
    return m


def matrix_to_euler_and_translation(matrix) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) -> ((3,) Euler 'xyz' degrees, (3,) translation). The translation is a view of `matrix`."""
    matrix = np.asarray(matrix)
    return euler_xyz_from_quat(quat_from_matrix(matrix[:3, :3])), matrix[:3, 3]


def pose_to_matrices(pose: np.ndarray) -> np.ndarray:
    """(T, 6) -> (T, 4, 4)."""
    return np.stack([euler_and_translation_to_matrix(p[:3], p[3:]) for p in pose])


def matrices_to_pose(matrices: np.ndarray) -> np.ndarray:
    """(T, 4, 4) -> (T, 6)."""
    return np.stack([np.concatenate(matrix_to_euler_and_translation(m)) for m in matrices])


# ---- pose sequences -----------------------------------------------------------------------------------

def smooth_pose_seq(pose: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` frames, truncated at both ends (T, D) -> (T, D),
    in `pose`'s dtype."""
    out = np.zeros_like(pose)
    half = window // 2
    for i in range(len(pose)):
        out[i] = np.mean(pose[max(0, i - half) : min(len(pose), i + half + 1)], axis=0)
    return out


def mirror_template(template: np.ndarray) -> np.ndarray:
    """Ping-pong loop of a (N, 6) head-pose template: the sequence, then its interior reversed (2N - 2)."""
    return np.concatenate((template, template[-2:0:-1]), axis=0)


def tile_template(template: np.ndarray, length: int) -> np.ndarray:
    """audio2vid's template pose: the mirrored template repeated to `length` frames, (length, 6)."""
    loop = mirror_template(template)
    return np.tile(loop, (length // len(loop) + 1, 1))[:length]


def posed_meshes(offsets: np.ndarray, ref_mesh: np.ndarray) -> np.ndarray:
    """Audio2Mesh output (T, 1404) or (T, 468, 3) plus the reference's canonical mesh (468, 3) -> (T, 468, 3)."""
    offsets = np.asarray(offsets)
    return offsets.reshape(offsets.shape[0], -1, 3) + ref_mesh


def landmarks_2d(offsets: np.ndarray, ref_mesh: np.ndarray, trans_mat: np.ndarray, pose: np.ndarray,
                 width: int, height: int) -> np.ndarray:
    """audio2vid's per-frame 2D landmarks: Audio2Mesh offsets (T, 1404) on the reference mesh (468, 3),
    posed by trans_mat and the (T, 6) delta poses, projected to a width x height image -> (T, 468, 2)
    pixels. (project_points takes [height, width]; this takes them named.)"""
    return project_points(posed_meshes(offsets, ref_mesh), trans_mat, pose, [height, width])
