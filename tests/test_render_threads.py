"""The embedded renderer's batches rendered by several threads on a CPU: the same frames, in order, as one
thread, and nothing left running when the consumer stops early. Uses the repository's own example portrait."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from a2pcli.headpose import apply_pose
from a2pcli.pipeline.portrait import PortraitOptions, load_portrait
from a2pcli.retarget import FaceTargets

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"


@pytest.fixture(scope="module")
def moving():
    """The example portrait at 256 px and 20 frames that turn the head and open the mouth."""
    from a2pcli import facemesh as fm
    from a2pcli.render import WarpRenderer

    portrait = load_portrait(EXAMPLE, PortraitOptions(crop=True, size=256))
    face, n = portrait.face, 20
    canon = np.repeat(face.canon[None], n, 0)
    lower = np.concatenate([fm.LIPS_INNER_LOWER[1:-1], fm.LIPS_OUTER_LOWER[1:-1], fm.CHIN])
    canon[:, lower, 1] += np.linspace(0, 0.15, n, dtype=np.float32)[:, None]
    yaw = np.radians(np.linspace(-12, 12, n))
    turn = np.stack([np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) for a in yaw])
    rot = (turn @ face.rotation).astype(np.float32)
    trans = np.repeat(face.translation[None], n, 0)
    scale = np.full(n, face.scale, np.float32)
    tgt = FaceTargets(apply_pose(canon, rot, trans, scale), rot, trans, scale)
    return WarpRenderer(portrait.image, face, tgt), tgt


def test_several_threads_render_the_same_frames_in_order_as_one(moving):
    renderer, tgt = moving
    one = np.concatenate(list(renderer.render_batches(tgt, 3, workers=1)))
    three = np.concatenate(list(renderer.render_batches(tgt, 3, workers=3)))
    assert one.shape == (20, 256, 256, 3)
    assert np.abs(one[0].astype(int) - one[-1].astype(int)).mean() > 1, "the head turned and the mouth opened"
    np.testing.assert_array_equal(three, one)


def test_a_consumer_that_stops_early_leaves_no_render_thread_running(moving):
    renderer, tgt = moving
    batches = renderer.render_batches(tgt, 2, workers=2)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("a2p-render")]
