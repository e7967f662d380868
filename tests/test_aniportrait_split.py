"""One clip of the diffusion renderer on several processes: a real `torch.distributed.run` of two CPU processes
(gloo) renders the same pose2vid command as one process, with the context windows split between them and with
the guidance halves split between them, and must give the same frames.

Tolerance: float32 on the CPU. Splitting changes which windows and guidance rows go through the denoiser
together (batch 2 instead of 4 here), so each window's prediction differs from the single process's in the last
bits (as `window_batch` does, tests/test_aniportrait_pipeline.py); after the steps and the VAE such a difference
can flip the 8-bit truncation of a pixel by one level. Measured: 22-25 of 245,760 values differ, by 1. Allowed:
at most 1 level, in at most 0.1 % of the values. The frames come from --frames-dir (lossless PNGs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import aniportrait_fixtures as fx
from tests.conftest import media

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 20  # two closed-loop windows: [0..15] and [12..19, 0..7]
MAX_LEVELS = 1
MAX_DIFFERING = 1e-3


def a2p_cmd(*args, nproc: int = 1) -> list[str]:
    """`python -m a2pcli ARGS`, or under torchrun with `nproc` processes (as a user starts it)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [sys.executable, *launcher, "-m", "a2pcli", *map(str, args)]


def run(*args, nproc: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}  # torchrun's default
    env.pop("A2P_DEBUG", None)
    return subprocess.run(a2p_cmd(*args, nproc=nproc), capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The tiny weights folder and a 20-frame head-motion template."""
    fx.folder()
    folder = tmp_path_factory.mktemp("split")
    weights = fx.write_tiny_folder(folder / "pretrained_model")
    motion = folder / "turn.npy"
    np.save(motion, np.load(ROOT / "examples" / "head_motion.npy")[:FRAMES])
    return weights, motion


def pose2vid(clip, out: Path, *extra, nproc: int = 1) -> subprocess.CompletedProcess:
    weights, motion = clip
    out.mkdir()
    return run("pose2vid", media("sadtalker_happy.png"), motion, "-o", out / "clip.mp4", "--renderer", "aniportrait",
               "--weights", weights, "--steps", "2", "--size", "64", "--device", "cpu", "--frames-dir", out / "frames",
               "--json", *extra, nproc=nproc)


def frames(out: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("*.png"))]).astype(np.int16)


@pytest.fixture(scope="module")
def single(clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    proc = pose2vid(clip, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return frames(out)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["windows", "cfg"])
def test_two_processes_render_one_clip_as_one_process_does(clip, single, tmp_path, split):
    out = tmp_path / "out"
    proc = pose2vid(clip, out, "--split", split, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)["outputs"][0]
    assert summary["split"] == {"mode": split, "processes": 2} and summary["windows"] == 2
    assert f"one clip on 2 processes: {split} split" in proc.stderr
    together = frames(out)
    assert together.shape == single.shape == (FRAMES, 64, 64, 3)
    assert single.std() > 1.0, "decoded pictures, not a constant"
    diff = np.abs(together - single)
    assert diff.max() <= MAX_LEVELS and (diff > 0).mean() <= MAX_DIFFERING, (diff.max(), (diff > 0).mean())
    # rank 0 alone wrote: the video and its frames, nothing else (no second video, no temporaries)
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "frames"]
    assert len(list((out / "frames").iterdir())) == FRAMES
    assert fx.video_frames(out / "clip.mp4").shape == (FRAMES, 64, 64, 3)


@pytest.mark.parametrize("command,rank", [("pose2vid", 0), ("pose2vid", 1), ("audio2video", 0)])
def test_one_clip_under_torchrun_needs_the_diffusion_renderer(tmp_path, command, rank):
    """Refused before the processes meet: each process of `torchrun --nproc-per-node 2` as torchrun starts it
    (rank 0 says why; the other exits with the same code, quietly). audio2video with one portrait and one speech
    file is one clip too (several are shared out over the processes)."""
    motion = tmp_path / "turn.npy"
    np.save(motion, np.load(ROOT / "examples" / "head_motion.npy")[:FRAMES])
    out = tmp_path / "clip.mp4"
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
    driver = motion if command == "pose2vid" else ROOT / "examples" / "speech.flac"
    proc = run(command, media("sadtalker_happy.png"), driver, "-o", out, "--crop", "--size", "96", env=env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if rank == 0:
        assert len(errors) == 1 and "--renderer aniportrait" in errors[0], proc.stderr[-3000:]
    else:
        assert not errors, proc.stderr[-3000:]
    assert not out.exists()


def test_the_windows_are_cut_into_contiguous_blocks_covering_the_clip():
    from a2pcli.aniportrait.split import ClipShare

    for mode, world in (("windows", 2), ("windows", 3), ("cfg", 2), ("cfg", 4), ("cfg", 6)):
        for count in (1, 2, 3, 8, 11):
            shares = [ClipShare(mode, r, world) for r in range(world)]
            blocks = [s.windows(count) for s in shares]
            halves = [s.half for s in shares]
            if mode == "cfg":  # each pair of processes runs one block, one half each
                assert halves == [0, 1] * (world // 2)
                assert blocks[0::2] == blocks[1::2]
                blocks = blocks[0::2]
            else:
                assert halves == [None] * world
            assert sum(blocks, []) == list(range(count)), (mode, world, count, blocks)
            assert all(b == list(range(b[0], b[-1] + 1)) for b in blocks if b)
            assert len(blocks[0]) == min(len(b) for b in blocks), "rank 0, which also decodes, gets the fewest"


def test_auto_picks_the_split_that_leaves_the_busiest_process_least():
    from a2pcli.aniportrait.split import plan_split

    assert plan_split("auto", 2, 8, do_cfg=True).mode == "windows"  # 4 windows each, or 8 halves: a tie
    assert plan_split("auto", 2, 3, do_cfg=True).mode == "cfg"  # 2 windows, or 3 halves (1.5 windows)
    assert plan_split("auto", 2, 1, do_cfg=True).mode == "cfg"
    assert plan_split("auto", 2, 1, do_cfg=False).mode == "windows"  # no halves to split
    assert plan_split("auto", 3, 2, do_cfg=True).mode == "windows"  # halves need pairs
    assert plan_split("auto", 4, 2, do_cfg=True).mode == "cfg"  # 1 window, or half a window
    assert plan_split("cfg", 2, 8, do_cfg=True).mode == "cfg"


def test_a_guidance_split_needs_guidance_and_pairs_of_processes():
    from a2pcli.aniportrait.split import check_split
    from a2pcli.errors import InputError

    check_split("cfg", 2, 3.5)
    check_split("cfg", 1, 1.0)  # one process: nothing is split
    check_split("windows", 3, 1.0)
    with pytest.raises(InputError, match="odd"):
        check_split("cfg", 3, 3.5)
    with pytest.raises(InputError, match="no guidance halves"):
        check_split("cfg", 2, 1.0)
    with pytest.raises(InputError, match="unknown --split"):
        check_split("rows", 2, 3.5)


def test_the_api_refuses_an_unknown_split_and_a_split_of_the_embedded_renderer():
    from a2pcli.aniportrait.render import DiffusionOptions
    from a2pcli.errors import InputError
    from a2pcli.pipeline.options import RendererName, RenderOptions, check_render

    check_render(RenderOptions(renderer=RendererName.aniportrait, diffusion=DiffusionOptions(split="cfg")), 512)
    with pytest.raises(InputError, match="unknown --split 'rows'"):
        check_render(RenderOptions(renderer=RendererName.aniportrait, diffusion=DiffusionOptions(split="rows")), 512)
    with pytest.raises(InputError) as exc:
        check_render(RenderOptions(diffusion=DiffusionOptions(split="windows")), 512)
    assert exc.value.one_line().startswith("--split: is an option of the diffusion renderer")
