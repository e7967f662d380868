"""This process's place among the processes torchrun started, its GPU, and the process group they share.

    launch = launch_from_env()               # Launch(rank, local_rank, world_size): rank 0 of 1 without torchrun
    gpu = node_gpu(launch.local_rank)        # the GPU of this node a process uses (None: the node has none)
    pin_gpu(gpu)                             # ... made its only visible GPU, before CUDA starts
    join_process_group(launch, "gloo", timeout_s=3600)   # torch.distributed's default group, left at exit
    rows = all_gather_json(row)              # every process's JSON-able value, in rank order
    job = broadcast_json(job)                # rank 0's value on every process (the others pass None)

Training (a2pcli.train.core: DistributedDataParallel over NCCL or gloo), batches (a2pcli.pipeline.shards:
every process its share of the jobs, gloo only to meet at the end) and one clip of the diffusion renderer on
every process (a2pcli.aniportrait.split: NCCL for the steps, gloo for the inputs) all start from here. Reading the
environment initialises nothing; torch is imported by the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from a2pcli.errors import EnvironmentProblem, InputError

TORCHRUN_REMEDY = "start the command with torchrun, or without these variables"


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0  # 0 .. world_size - 1 over every node
    local_rank: int = 0  # the process's number on its own node: its GPU is the local_rank-th of the node
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_from_env(env: dict | None = None) -> Launch:
    """torchrun's RANK, LOCAL_RANK and WORLD_SIZE, checked; Launch() when they are absent. Reads the
    environment only (nothing is initialised), so it can be asked before any work."""
    env = os.environ if env is None else env
    values = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = (env.get(name) or default).strip()
        if not text.isdigit():
            raise InputError(f"must be a whole number, got {text!r}", subject=name, remedy=TORCHRUN_REMEDY)
        values[name] = int(text)
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world < 1 or rank >= world:
        raise InputError(f"rank {rank} of {world} processes is not a place in the run", subject="RANK/WORLD_SIZE",
                         remedy=TORCHRUN_REMEDY)
    return Launch(rank, values["LOCAL_RANK"], world)


def too_few_gpus(count: int, local_rank: int, cpu_remedy: str) -> EnvironmentProblem:
    """The error of a process whose local rank has no GPU of its own on this node."""
    return EnvironmentProblem(f"torch sees {count} GPU(s) on this machine, too few for process {local_rank} "
                              "of this node", subject=f"LOCAL_RANK={local_rank}",
                              remedy=f"start at most {count} process(es) per node (--nproc-per-node), {cpu_remedy}")


# --- one GPU per process, chosen before CUDA starts ---------------------------------------------------------


def node_gpus(env: dict | None = None) -> list[str]:
    """The GPUs this node's processes may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs). Asks
    NVML through torch when the variable is unset: CUDA itself is not started, so the variable can still be
    narrowed afterwards. [] on a machine without GPUs or with a CPU-only torch build."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()]
    import torch

    if not torch.version.cuda:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def node_gpu(local_rank: int, env: dict | None = None) -> str | None:
    """The GPU process `local_rank` of this node uses: the local_rank-th, round robin when the node starts more
    processes than it has GPUs (they then share them); None without GPUs."""
    gpus = node_gpus(env)
    return gpus[local_rank % len(gpus)] if gpus else None


def pin_gpu(gpu: str) -> None:
    """Make `gpu` the only GPU this process sees (its cuda:0), so every device choice of the process (`auto`,
    `cuda`) lands on it. Must run before anything starts CUDA in this process: EnvironmentProblem when CUDA had
    already started with every GPU visible (torch counts GPUs through NVML first; without NVML it starts CUDA)."""
    import torch

    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if torch.version.cuda and torch.cuda.device_count() > 1:
        raise EnvironmentProblem(f"CUDA started before this process could keep to GPU {gpu} alone",
                                 subject="CUDA_VISIBLE_DEVICES", remedy="check the driver's NVML library with "
                                 "`a2p doctor` or nvidia-smi, or start one process per machine")


# --- the process group ---------------------------------------------------------------------------------------


def join_process_group(launch: Launch, backend: str, timeout_s: float) -> None:
    """torch.distributed's default group (torchrun's MASTER_ADDR/MASTER_PORT) with `backend` ("gloo", "nccl", or
    one per device type: "cpu:gloo,cuda:nccl"); a collective waits up to `timeout_s` for the slowest process.
    Left again at exit."""
    import atexit
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_available():
        raise EnvironmentProblem("this torch build has no torch.distributed", subject="torchrun",
                                 remedy="install a torch build with distributed support, or run without torchrun")
    if dist.is_initialized():
        if dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
            raise EnvironmentProblem("a process group of another shape is already running", subject="torchrun")
        return
    for name in (part.split(":")[-1] for part in backend.split(",")):  # "gloo", or "cpu:gloo,cuda:nccl"
        available = dist.is_nccl_available() if name == "nccl" else dist.is_gloo_available()
        if not available:
            raise EnvironmentProblem(f"this torch build lacks the {name} backend", subject="torchrun",
                                     remedy="install the official torch build")
    dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size,
                            timeout=timedelta(seconds=timeout_s))
    atexit.register(leave_process_group)


# How long leaving the group lets the group's worker threads take the GIL: see leave_process_group.
GLOO_SETTLE_S = 0.05


def leave_process_group() -> None:
    """Leaves the default group, then lets its worker threads finish while the interpreter is whole.

    gloo's worker threads outlive the group (torch keeps it), and after a collective has completed, a worker
    still releases the collective's tensors, which takes the GIL; a process whose main thread runs straight
    on into the interpreter's teardown can leave a worker waiting for the GIL then, and a thread that takes
    the GIL during teardown is ended under that release: the process aborts ("terminate called without an
    active exception", SIGABRT) after a run that succeeded. Sleeping a moment here hands the GIL over."""
    import time

    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        time.sleep(GLOO_SETTLE_S)


def all_gather_json(value) -> list:
    """`value` (JSON-able) of every process of the group, in rank order: sent as UTF-8 JSON bytes (no pickle),
    over the default group's CPU backend."""
    import torch
    import torch.distributed as dist

    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    chunks = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(n)].tolist()).decode()) for c, n in zip(chunks, sizes)]


def broadcast_bytes(data: bytes | None, src: int = 0) -> bytes:
    """Rank `src`'s `data` on every process (the others pass None), over the default group's CPU backend."""
    import torch
    import torch.distributed as dist

    mine = dist.get_rank() == src
    size = torch.tensor([len(data) if mine else 0], dtype=torch.int64)
    dist.broadcast(size, src)
    n = int(size)
    if n == 0:
        return b""
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if mine else torch.empty(n, dtype=torch.uint8)
    dist.broadcast(buf, src)
    return data if mine else buf.numpy().tobytes()


def broadcast_json(value=None, src: int = 0):
    """Rank `src`'s JSON-able `value` on every process, sent as UTF-8 JSON bytes (no pickle)."""
    import torch.distributed as dist

    data = json.dumps(value).encode() if dist.get_rank() == src else None
    return json.loads(broadcast_bytes(data, src).decode())


def barrier() -> None:
    """Every process of the group waits here for the others."""
    import torch.distributed as dist

    dist.barrier()
