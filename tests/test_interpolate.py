"""Flow interpolation of in-between frames (`--acc N` of the diffusion renderer)."""

from __future__ import annotations

import numpy as np
import pytest

from a2pcli.interpolate import FlowInterpolator, fill, key_frames

cv2 = pytest.importorskip("cv2")


def _disk(cx: float, size: int = 128) -> np.ndarray:
    """A textured disk on a textured background, centred at (cx, size/2)."""
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(rng.integers(0, 90, (size, size, 3)).astype(np.uint8), (0, 0), 2)
    img = bg.copy()
    yy, xx = np.mgrid[0:size, 0:size]
    tex = (160 + 60 * np.sin(xx / 3.0 - cx / 3.0) * np.cos(yy / 4.0))[..., None]
    inside = (xx - cx) ** 2 + (yy - size / 2) ** 2 < 18 ** 2
    img[inside] = np.clip(tex, 0, 255).astype(np.uint8).repeat(3, -1)[inside]
    return img


def _centre_x(img: np.ndarray) -> float:
    mask = img.mean(-1) > 120
    return float(np.nonzero(mask)[1].mean())


def test_middle_frame_puts_a_moving_disk_half_way():
    a, b = _disk(40), _disk(50)
    mid, quarter = FlowInterpolator().between(a, b, [0.5, 0.25])
    assert abs(_centre_x(mid) - 45) < 1.5
    assert abs(_centre_x(quarter) - 42.5) < 1.5
    # a moved disk, not a double exposure of the two ends
    assert (mid.mean(-1) > 120).sum() == pytest.approx((a.mean(-1) > 120).sum(), rel=0.2)


def test_key_frames_always_include_the_last_frame():
    assert key_frames(10, 3) == [0, 3, 6, 9]
    assert key_frames(11, 3) == [0, 3, 6, 9, 10]
    assert key_frames(5, 1) == [0, 1, 2, 3, 4]
    assert key_frames(1, 4) == [0]


def test_fill_streams_every_frame_in_order_keeping_the_rendered_ones():
    keys = key_frames(8, 3)  # 0, 3, 6, 7
    rendered = [_disk(30 + 5 * k) for k in keys]
    out = list(fill(keys, iter(rendered), workers=2))
    assert len(out) == 8
    for k, frame in zip(keys, rendered):
        assert out[k] is frame
    xs = [_centre_x(f) for f in out]
    assert all(x1 > x0 for x0, x1 in zip(xs, xs[1:]))  # the disk moves steadily right


def test_mismatched_frames_are_refused():
    with pytest.raises(ValueError, match="one size"):
        FlowInterpolator().between(_disk(40), _disk(40, size=64), [0.5])
