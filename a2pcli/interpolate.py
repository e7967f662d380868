"""In-between frames from two rendered frames, by optical flow (no weights to download).

`--acc N` of the diffusion renderer renders every N-th frame and fills the frames between each pair
of rendered neighbours here: dense optical flow both ways (OpenCV's DIS), the intermediate flows of
each in-between time by the linear approximation of Super SloMo (Jiang et al. 2018),
`F_t->0 = -(1-t) t F_0->1 + t^2 F_1->0` and `F_t->1 = (1-t)^2 F_0->1 - t (1-t) F_1->0`, both
neighbours warped backwards to time t and blended with weights (1-t, t). Talking-head frames
differ by small, smooth motion (a head turn, the lips), which this handles well; large occlusions
(a hand crossing the face) blur.

    interp = FlowInterpolator()
    middle = interp.between(frame_a, frame_b, [0.5])      # uint8 (H, W, 3) RGB in, list out
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class FlowInterpolator:
    """Frames between two uint8 RGB frames of one size. `preset`: DIS's "fast" (the default: on
    talking-head frames within 0.3 dB of "medium" at half the time) or "medium"."""

    def __init__(self, preset: str = "fast"):
        import cv2

        presets = {"fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if preset not in presets:
            raise ValueError(f"unknown DIS preset {preset!r}: use one of {sorted(presets)}")
        self.cv2 = cv2
        self.dis = cv2.DISOpticalFlow_create(presets[preset])
        self._grid = None

    def _identity(self, h: int, w: int) -> np.ndarray:
        if self._grid is None or self._grid.shape[:2] != (h, w):
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            self._grid = np.stack([xs, ys], -1)
        return self._grid

    def flows(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F_0->1, F_1->0), float32 (H, W, 2) in pixels: a(x) ~ b(x + F_0->1(x))."""
        cv2 = self.cv2
        ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
        return self.dis.calc(ga, gb, None), self.dis.calc(gb, ga, None)

    def between(self, a: np.ndarray, b: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        """The frames at fractional times `times` (each in (0, 1)) between `a` (t = 0) and `b` (t = 1)."""
        if a.shape != b.shape or a.dtype != np.uint8 or a.ndim != 3:
            raise ValueError(f"frames must be uint8 (H, W, 3) of one size, got {a.shape} {a.dtype} and {b.shape}")
        if not times:
            return []
        cv2 = self.cv2
        f01, f10 = self.flows(a, b)
        grid = self._identity(*a.shape[:2])
        af, bf = a.astype(np.float32), b.astype(np.float32)
        out = []
        for t in times:
            t = float(t)
            ft0 = -(1 - t) * t * f01 + t * t * f10
            ft1 = (1 - t) ** 2 * f01 - t * (1 - t) * f10
            wa = cv2.remap(af, grid + ft0, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            wb = cv2.remap(bf, grid + ft1, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            mid = (1 - t) * wa + t * wb
            out.append(np.clip(mid + 0.5, 0, 255).astype(np.uint8))
        return out


def key_frames(n: int, every: int) -> list[int]:
    """The indices rendered with `--acc every` for an n-frame video: 0, every, 2·every, ..., and the
    last frame (so no frame is extrapolated)."""
    if n < 1 or every < 1:
        raise ValueError(f"need n >= 1 and every >= 1, got {n}, {every}")
    keys = list(range(0, n, every))
    if keys[-1] != n - 1:
        keys.append(n - 1)
    return keys


def fill(keys: Sequence[int], frames: Iterable[np.ndarray], preset: str = "fast", workers: int | None = None
         ) -> Iterator[np.ndarray]:
    """Every frame from 0 to keys[-1], in order: the rendered `frames` (one per key, in order, a
    stream) and the in-betweens. Pairs are interpolated on a small thread pool (OpenCV releases the
    GIL), overlapping the decoding of the next rendered frames; at most a few pairs are in flight,
    so memory stays bounded for any length."""
    import os
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or max(1, min(4, (os.cpu_count() or 1)))
    local = threading.local()

    def between(a, b, gap):
        if not hasattr(local, "interp"):
            local.interp = FlowInterpolator(preset)
        return local.interp.between(a, b, [i / gap for i in range(1, gap)])

    pending: deque = deque()  # (future of the in-betweens or None, rendered frame)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="a2p-interp") as pool:
        prev_key, prev = None, None
        for key, frame in zip(keys, frames, strict=True):
            fut = None
            if prev is not None and key - prev_key > 1:
                fut = pool.submit(between, prev, frame, key - prev_key)
            pending.append((fut, frame))
            prev_key, prev = key, frame
            while pending and (len(pending) > 2 * workers or pending[0][0] is None or pending[0][0].done()):
                fut0, frame0 = pending.popleft()
                if fut0 is not None:
                    yield from fut0.result()
                yield frame0
        while pending:
            fut0, frame0 = pending.popleft()
            if fut0 is not None:
                yield from fut0.result()
            yield frame0
