"""Named parts of the MediaPipe face mesh (478 points), as index arrays. Plain data: no mediapipe import,
so the renderer runs where mediapipe is not installed (a GPU server rendering stored motion).

"Right" and "left" are the subject's. Contours run from the subject's right to left.
"""

from __future__ import annotations

import numpy as np

FACE_OVAL = np.array([10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
                      377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338])

LIPS_INNER_UPPER = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308])
LIPS_INNER_LOWER = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308])
LIPS_OUTER_UPPER = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291])
LIPS_OUTER_LOWER = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291])

RIGHT_EYE_UPPER = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133])
RIGHT_EYE_LOWER = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133])
LEFT_EYE_UPPER = np.array([362, 398, 384, 385, 386, 387, 388, 466, 263])
LEFT_EYE_LOWER = np.array([362, 382, 381, 380, 374, 373, 390, 249, 263])
# the skin ring around each eye: the upper-lid crease above, the top of the cheek below
RIGHT_EYE_RING_UPPER = np.array([247, 30, 29, 27, 28, 56, 190])
RIGHT_EYE_RING_LOWER = np.array([130, 25, 110, 24, 23, 22, 26, 112, 243])
LEFT_EYE_RING_UPPER = np.array([414, 286, 258, 257, 259, 260, 467])
LEFT_EYE_RING_LOWER = np.array([463, 341, 256, 252, 253, 254, 339, 255, 359])
RIGHT_IRIS = np.array([468, 469, 470, 471, 472])
LEFT_IRIS = np.array([473, 474, 475, 476, 477])

RIGHT_BROW = np.array([70, 63, 105, 66, 107, 46, 53, 52, 65, 55])
LEFT_BROW = np.array([300, 293, 334, 296, 336, 276, 283, 282, 295, 285])

NOSE = np.array([168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 64, 294, 48, 278, 115, 344, 220, 440, 45, 275])
CHEEKS = np.array([50, 280, 205, 425, 187, 411, 36, 266, 147, 376, 192, 416, 214, 434, 207, 427, 116, 345,
                   123, 352, 117, 346, 118, 347, 101, 330, 142, 371, 216, 436, 206, 426])
CHIN = np.array([18, 200, 199, 175, 32, 262, 208, 428, 171, 396, 140, 369, 83, 313, 201, 421, 194, 418, 57, 287,
                 43, 273, 106, 335, 182, 406])
FOREHEAD = np.array([151, 9, 108, 337, 69, 299, 104, 333, 68, 298, 71, 301, 8])

EYELIDS = np.concatenate([RIGHT_EYE_UPPER, RIGHT_EYE_LOWER, LEFT_EYE_UPPER, LEFT_EYE_LOWER])
EYE_RINGS = np.concatenate([RIGHT_EYE_RING_UPPER, RIGHT_EYE_RING_LOWER, LEFT_EYE_RING_UPPER, LEFT_EYE_RING_LOWER])
LIPS = np.concatenate([LIPS_INNER_UPPER, LIPS_INNER_LOWER[1:-1], LIPS_OUTER_UPPER, LIPS_OUTER_LOWER[1:-1]])

# The points whose motion drives the dense warp: every lip and lid point, the skin rings around the eyes,
# and a thinner spread over the rest of the face. No irises: they follow gaze, not the lids.
WARP_POINTS = np.unique(np.concatenate([
    FACE_OVAL[::2], LIPS, EYELIDS, RIGHT_EYE_RING_UPPER[::2], RIGHT_EYE_RING_LOWER[::2], LEFT_EYE_RING_UPPER[::2],
    LEFT_EYE_RING_LOWER[::2], RIGHT_BROW[:5], LEFT_BROW[:5], NOSE[::3], CHEEKS[::3], CHIN[::3], FOREHEAD[::2],
]))
