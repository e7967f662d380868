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
    # the same work per batch: equal up to float rounding of kernels run from other threads (any CPU)
    diff = np.abs(three.astype(int) - one.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_a_consumer_that_stops_early_leaves_no_render_thread_running(moving):
    renderer, tgt = moving
    batches = renderer.render_batches(tgt, 2, workers=2)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("a2p-render")]


def test_the_warp_spline_made_in_chunks_equals_the_whole_kernel_block(monkeypatch):
    """The thin-plate spline at the field's nodes, evaluated a chunk of nodes at a time (the CPU path) or in one
    block (the GPU path), equals the textbook sum of U(r) = r^2 log r over the centres plus the affine part."""
    import torch

    from a2pcli import render

    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 40, 2, generator=gen) * 4
    g = torch.rand(500, 2, generator=gen) * 4
    coef = torch.randn(3, 43, 2, generator=gen, dtype=torch.float64)
    r = torch.cdist(g.double()[None].expand(3, -1, -1), p.double())
    u = torch.where(r > 0, r.square() * torch.log(r.clamp_min(1e-300)), torch.zeros_like(r))
    affine = torch.cat([torch.ones(500, 1, dtype=torch.float64), g.double()], 1)
    want = u @ coef[:, :40] + affine @ coef[:, 40:]
    for chunk in (64, 500):
        monkeypatch.setattr(render, "TPS_NODE_CHUNK_CPU", chunk)
        got = render._tps_at_nodes(g, p, coef.float()).double()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-3 * float(want.abs().max())), chunk
