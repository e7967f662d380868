"""One clip of the diffusion renderer on several processes (torchrun, one GPU each).

At every denoising step the context windows of a clip are independent until their overlaps are averaged,
and the unguided and guided halves of classifier-free guidance are independent until they are combined.
So each process computes a share of a step and one all_reduce (a sum) gives every process the step's
window sums, from which each takes the same scheduler step on the same latents:

- `windows`: the window list cut into contiguous blocks, one per process (rank 0 gets the smallest: it
  also decodes and encodes); any number of processes;
- `cfg`: the processes in pairs, the first of each pair the unguided half (no reference attention; it
  skips the reference pass), the second the guided half; the windows cut into blocks over the pairs, so
  2 processes split the guidance alone and 4 split it and the windows in two;
- `auto`: the one that leaves the busiest process the fewest window-halves (cfg when the clip has fewer
  windows than processes, windows otherwise).

Rank 0 runs the command as in one process (reads the inputs, loads the models, writes the video and its
sidecar) and sends each clip to the others before sampling: the sampler's settings, the reference image
and the landmarks of the frames to diffuse. The others (`serve_clips`) load the same models on their own
GPU while rank 0 prepares, take their share of every step, and write nothing. Every process draws the
same initial noise from the seed. Rank 0 alone decodes: 1.4 s of a 28-37 s render of 90 frames at 512x512
on an H100 (benchmarks/README.md); split, it would save under a second for 70 MB of frames to gather.

    group = join_clip_group(launch, "auto")      # this process's GPU and the process group
    ... rank 0: render_video_aniportrait(..., models) with models.clip_group = group; group.close()
    ... the others: serve_clips(group, diffusion_options, "auto")

Sums over windows held by different processes are added in another order than in one process only where
three or more windows overlap (closed-loop clips whose end wraps round to the start); a step's windows
batched differently round differently in the last bits. Both stay within the exact savings' tolerance.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from a2pcli.errors import A2PError, InputError
from a2pcli.launch import Launch, broadcast_bytes, broadcast_json, join_process_group, node_gpu, pin_gpu

SPLIT_MODES = ("auto", "windows", "cfg")
CLIP_WAIT_S = 24 * 3600  # how long the other processes wait for rank 0's next clip (it may extract a long video first)
END = "end"
CLIP = "clip"


class SplitMode(str, Enum):
    auto = "auto"
    windows = "windows"
    cfg = "cfg"


@dataclass(frozen=True)
class ClipShare:
    """One process's share of every denoising step of a clip."""

    mode: str  # "windows" or "cfg"
    rank: int = 0
    world: int = 1

    @property
    def half(self) -> int | None:
        """The guidance half this process runs (0: unguided, 1: guided), None: both."""
        return self.rank % 2 if self.mode == "cfg" else None

    @property
    def blocks(self) -> int:
        """Into how many blocks the window list is cut."""
        return self.world // 2 if self.mode == "cfg" else self.world

    def windows(self, count: int) -> list[int]:
        """The indices of this process's windows among `count`: a contiguous block, the earlier blocks the
        smaller ones."""
        b = self.rank // 2 if self.mode == "cfg" else self.rank
        return list(range(b * count // self.blocks, (b + 1) * count // self.blocks))

    def combine(self, sums, rows: int):
        """This process's window sums (its half's row, or all `rows`) -> every process's added up, (rows, ...)."""
        import torch
        import torch.distributed as dist

        if sums.shape[0] != rows:
            full = torch.zeros((rows, *sums.shape[1:]), dtype=sums.dtype, device=sums.device)
            full[self.half] = sums[0]
            sums = full
        dist.all_reduce(sums)
        return sums


def check_split(mode: str, world: int, guidance: float) -> None:
    """--split against the number of processes and the guidance scale, before any work."""
    if mode not in SPLIT_MODES:
        raise InputError(f"unknown --split {mode!r}", subject="--split", remedy=f"use {', '.join(SPLIT_MODES)}")
    if mode != "cfg" or world == 1:
        return
    if guidance <= 1.0:
        raise InputError(f"--cfg {guidance:g} has no guidance halves to split", subject="--split cfg",
                         remedy="use --split windows, or a --cfg above 1")
    if world % 2:
        raise InputError(f"the guidance halves pair the processes: {world} is odd", subject="--split cfg",
                         remedy="start an even number of processes (--nproc-per-node), or use --split windows")


def plan_split(mode: str, world: int, windows: int, do_cfg: bool) -> ClipShare:
    """The resolved share of rank 0 (`mode` "auto": the split whose busiest process runs the fewest
    window-halves; windows on a tie)."""
    if mode == "auto":
        by_windows = math.ceil(windows / world)
        pairs = world // 2
        by_cfg = math.ceil(windows / pairs) / 2 if do_cfg and pairs and world % 2 == 0 else math.inf
        mode = "cfg" if by_cfg < by_windows else "windows"
    return ClipShare(mode, 0, world)


@dataclass
class ClipGroup:
    """The processes that render one clip together, from this process's side."""

    launch: Launch
    device: str  # this process's device: "cuda:0" (its own GPU, the only one it sees) or "cpu"
    busy: bool = field(default=False, repr=False)  # rank 0: a clip was sent and not finished

    def share(self, mode: str) -> ClipShare:
        return ClipShare(mode, self.launch.rank, self.launch.world_size)

    def send_clip(self, header: dict, arrays: dict[str, np.ndarray]) -> None:
        """Rank 0: a clip to the others (JSON header, then each array's bytes)."""
        specs = {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()}
        broadcast_json({"kind": CLIP, **header, "arrays": specs})
        self.busy = True
        for a in arrays.values():
            broadcast_bytes(np.ascontiguousarray(a).tobytes())

    def receive_clip(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """The others: rank 0's next clip, or None when it has no more."""
        header = broadcast_json()
        if header.get("kind") != CLIP:
            return None
        arrays = {}
        for name, (dtype, shape) in header.pop("arrays").items():
            arrays[name] = np.frombuffer(broadcast_bytes(None), dtype=np.dtype(dtype)).reshape(shape)
        return header, arrays

    def clip_done(self) -> None:
        self.busy = False

    def close(self) -> None:
        """Rank 0, at the end: tells the others to stop. Not when a clip broke off half-way (they wait in the
        middle of a step): rank 0 then exits with its error and torchrun stops the others."""
        if self.launch.is_main and not self.busy:
            with contextlib.suppress(RuntimeError):  # the others are gone already
                broadcast_json({"kind": END})
                self.leave()

    def leave(self) -> None:
        """Every process, after the last clip: wait for the others, then leave the process group together (a
        process that tears its connections down while another still uses them can abort at exit)."""
        from a2pcli.launch import barrier, leave_process_group

        with contextlib.suppress(RuntimeError):
            barrier()
        leave_process_group()


def join_clip_group(launch: Launch, device_spec: str) -> ClipGroup:
    """This process's GPU (the local_rank-th of its node, made its only visible one) and the process group:
    NCCL between GPUs for the steps, gloo for the clips' inputs (CPU tensors); gloo alone without GPUs."""
    from a2pcli.device import parse_device

    kind, index = parse_device(device_spec)
    if index is not None:
        raise InputError("under torchrun each process uses the GPU of its local rank",
                         subject=f"--device {device_spec}",
                         remedy="use --device auto or cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")
    gpu = node_gpu(launch.local_rank) if kind != "cpu" else None
    if gpu is not None:
        import torch

        pin_gpu(gpu)
        torch.cuda.set_device(0)
        join_process_group(launch, "cpu:gloo,cuda:nccl", CLIP_WAIT_S)
        return ClipGroup(launch, "cuda:0")
    join_process_group(launch, "gloo", CLIP_WAIT_S)
    return ClipGroup(launch, "cpu")


def serve_clips(group: ClipGroup, dopts, device_spec: str) -> int:
    """Every process but rank 0: load the models (while rank 0 reads its inputs), then take this process's share
    of each clip rank 0 sends, until it says it has no more. Returns the number of clips served."""
    from a2pcli.aniportrait.render import render_share

    held = _Held()
    held.preload(dopts, device_spec, group.device)
    served = 0
    while (clip := group.receive_clip()) is not None:
        header, arrays = clip
        models = held.get(header["weights"], header["dtype"], header["device"], header["compile"])
        render_share(models, header, arrays, group.share(header["mode"]))
        served += 1
    group.leave()
    return served


class _Held:
    """The other processes' one set of networks (rank 0 holds its own in pipeline.Models)."""

    def __init__(self):
        self.key, self.models, self.compiled = None, None, False

    def preload(self, dopts, device_spec: str, device: str) -> None:
        """The networks rank 0 is about to load, loaded now. A failure here is left for the clip to meet: rank 0
        meets the same one first and says why."""
        from a2pcli.aniportrait.render import resolve_dtype

        if device_spec.strip().lower() == "cpu":
            device = "cpu"
        try:
            self.get(dopts.weights, resolve_dtype(dopts.dtype, device), device, False)
        except A2PError:
            self.key, self.models = None, None

    def get(self, weights: str | None, dtype: str, device: str, compile_: bool):
        from a2pcli.aniportrait.render import load_models
        from a2pcli.aniportrait.runtime import speed_settings

        key = (weights, dtype, device)
        if key != self.key:
            self.models, self.key, self.compiled = None, None, False
            self.models = load_models(weights, dtype, device)
            self.key = key
        if compile_ and not self.compiled:
            speed_settings(self.models, compile=True)
            self.compiled = True
        return self.models
