"""AniPortrait's landmark ("pose") images: what `FaceMeshVisualizer(forehead_edge=False).draw_landmarks`
draws (AniPortrait commit 7f6593f, `src/utils/draw_util.py`, through mediapipe's
`solutions.drawing_utils.draw_landmarks`), without importing mediapipe.

    draw_landmarks((W, H), keypoints, normed) -> (H, W, 3) uint8, channels in the order the colours are
    given to OpenCV (AniPortrait calls it BGR and feeds the images to its PoseGuider unchanged)

How the original draws, restated here:
- a black 512 x 512 canvas, resized to (W, H) with cv2.resize (bilinear) at the end;
- each landmark goes through a protobuf float32 field: x = float32(kx / W) for pixel input (the division
  in float64, as numpy 1.x scalar arithmetic does), float32(kx) for normalised input;
- a landmark counts when both coordinates lie in [0, 1] (math.isclose slack at 1); its pixel is
  min(floor(v * 512), 511);
- an edge is a 2-px cv2.line drawn when both ends count, no dots, no irises;
- edges are drawn in the insertion order of AniPortrait's edge -> colour dict: its face oval, mediapipe's
  left eye, left eyebrow, right eye and right eyebrow `frozenset`s (in their iteration order, which is
  fixed for int tuples and is hardcoded below), then 8 lip segments. A repeated edge would keep its first
  position and take the later colour (none repeats).
Pixel-exact against the oracle's images (drawn with opencv 4.8.1.78, AniPortrait's pin) with opencv 4.11.0
as well (tests/test_aniportrait_geometry.py); another OpenCV could rasterise line ends differently.
"""

from __future__ import annotations

import numpy as np

CANVAS = 512  # FaceMeshVisualizer's fixed drawing size
THICKNESS = 2

# colours as given to cv2 (draw_util.py)
HEAD = (10, 200, 10)
LEFT_EYE = (180, 200, 10)
LEFT_EYEBROW = (180, 220, 10)
RIGHT_EYE = (10, 200, 180)
RIGHT_EYEBROW = (10, 220, 180)
LIPS_OUTER_BOTTOM_LEFT = (10, 180, 20)
LIPS_OUTER_BOTTOM_RIGHT = (20, 10, 180)
LIPS_INNER_BOTTOM_LEFT = (100, 100, 30)
LIPS_INNER_BOTTOM_RIGHT = (100, 150, 50)
LIPS_OUTER_TOP_LEFT = (20, 80, 100)
LIPS_OUTER_TOP_RIGHT = (80, 100, 20)
LIPS_INNER_TOP_LEFT = (120, 100, 200)
LIPS_INNER_TOP_RIGHT = (150, 120, 100)

# draw_util.py's face oval without the forehead (forehead_edge=False), in its list order
CUSTOM_FACE_OVAL = [(176, 149), (150, 136), (356, 454), (58, 132), (152, 148), (361, 288), (251, 389), (132, 93),
                    (389, 356), (400, 377), (136, 172), (377, 152), (323, 361), (172, 58), (454, 323), (365, 379),
                    (379, 378), (148, 176), (93, 234), (397, 365), (149, 150), (288, 397), (234, 127), (378, 400),
                    (127, 162), (162, 21)]

# mediapipe face_mesh_connections frozensets, in iteration order: list(frozenset(SOURCE_ORDER[name]))
FROZENSET_ORDER = {
    "left_eye": [(374, 380), (390, 373), (249, 390), (385, 384), (373, 374), (263, 466), (387, 386), (381, 382),
                 (384, 398), (466, 388), (386, 385), (388, 387), (263, 249), (380, 381), (398, 362), (382, 362)],
    "left_eyebrow": [(334, 296), (276, 283), (293, 334), (295, 285), (296, 336), (282, 295), (283, 282),
                     (300, 293)],
    "right_eye": [(154, 155), (33, 7), (246, 161), (159, 158), (144, 145), (173, 133), (158, 157), (163, 144),
                  (153, 154), (7, 163), (161, 160), (157, 173), (33, 246), (160, 159), (145, 153), (155, 133)],
    "right_eyebrow": [(46, 53), (66, 107), (52, 65), (53, 52), (63, 105), (70, 63), (65, 55), (105, 66)],
}
# the same sets as mediapipe's source writes them (the order the frozensets were built from)
SOURCE_ORDER = {
    "left_eye": [(263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382), (382, 362),
                 (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384), (384, 398), (398, 362)],
    "left_eyebrow": [(276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334), (334, 296),
                     (296, 336)],
    "right_eye": [(33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
                  (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157), (157, 173), (173, 133)],
    "right_eyebrow": [(46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66), (66, 107)],
}

LIPS = [
    ([(61, 146), (146, 91), (91, 181), (181, 84), (84, 17)], LIPS_OUTER_BOTTOM_LEFT),
    ([(17, 314), (314, 405), (405, 321), (321, 375), (375, 291)], LIPS_OUTER_BOTTOM_RIGHT),
    ([(78, 95), (95, 88), (88, 178), (178, 87), (87, 14)], LIPS_INNER_BOTTOM_LEFT),
    ([(14, 317), (317, 402), (402, 318), (318, 324), (324, 308)], LIPS_INNER_BOTTOM_RIGHT),
    ([(61, 185), (185, 40), (40, 39), (39, 37), (37, 0)], LIPS_OUTER_TOP_LEFT),
    ([(0, 267), (267, 269), (269, 270), (270, 409), (409, 291)], LIPS_OUTER_TOP_RIGHT),
    ([(78, 191), (191, 80), (80, 81), (81, 82), (82, 13)], LIPS_INNER_TOP_LEFT),
    ([(13, 312), (312, 311), (311, 310), (310, 415), (415, 308)], LIPS_INNER_TOP_RIGHT),
]


def _edge_colours() -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    """[(edge, colour)] in drawing order, built as AniPortrait's dict is."""
    spec: dict[tuple[int, int], tuple[int, int, int]] = {}
    groups = [(CUSTOM_FACE_OVAL, HEAD), (FROZENSET_ORDER["left_eye"], LEFT_EYE),
              (FROZENSET_ORDER["left_eyebrow"], LEFT_EYEBROW), (FROZENSET_ORDER["right_eye"], RIGHT_EYE),
              (FROZENSET_ORDER["right_eyebrow"], RIGHT_EYEBROW), *LIPS]
    for edges, colour in groups:
        for edge in edges:
            spec[edge] = colour
    return list(spec.items())


EDGES = _edge_colours()  # 114 edges
N_POINTS_NEEDED = 1 + max(max(e) for e, _ in EDGES)  # 398: keypoints must cover every edge end


def _canvas_pixels(keypoints: np.ndarray, image_size, normed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, >=2) keypoints -> ((N, 2) int canvas pixels, (N,) bool usable)."""
    kp = np.asarray(keypoints)
    xy = kp[:, :2].astype(np.float64)
    if not normed:
        xy = xy / np.array([image_size[0], image_size[1]], np.float64)
    v = xy.astype(np.float32).astype(np.float64)  # the protobuf float field
    upper = (v < 1) | (np.isfinite(v) & (np.abs(1 - v) <= 1e-9 * np.maximum(1.0, np.abs(v))))  # isclose(1, v)
    ok = (((v > 0) | (v == 0)) & upper).all(axis=1)
    px = np.minimum(np.floor(np.where(ok[:, None], v, 0.0) * CANVAS), CANVAS - 1).astype(np.int64)
    return px, ok


def draw_landmarks(image_size, keypoints: np.ndarray, normed: bool = False) -> np.ndarray:
    """image_size: (W, H); keypoints: (N, 2 or 3), N >= 398 (468 mesh points or 478 with irises), pixels
    of a (W, H) image or normalised to [0, 1] -> (H, W, 3) uint8 landmark image."""
    import cv2

    w, h = int(image_size[0]), int(image_size[1])
    if len(keypoints) < N_POINTS_NEEDED:
        raise ValueError(f"draw_landmarks needs at least {N_POINTS_NEEDED} keypoints, got {len(keypoints)}")
    px, ok = _canvas_pixels(keypoints, (w, h), normed)
    image = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    for (a, b), colour in EDGES:
        if ok[a] and ok[b]:
            cv2.line(image, (int(px[a, 0]), int(px[a, 1])), (int(px[b, 0]), int(px[b, 1])), colour, THICKNESS)
    return cv2.resize(image, (w, h))


def draw_sequence(image_size, keypoints: np.ndarray, normed: bool = False) -> np.ndarray:
    """(T, N, 2) keypoints -> (T, H, W, 3) uint8 landmark images."""
    return np.stack([draw_landmarks(image_size, k, normed) for k in keypoints])

