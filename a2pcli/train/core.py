"""What every a2p trainer shares: options, runtime, seeds, learning-rate schedule, weight average, run state,
checkpoints, the JSONL log, the model folder, and the epoch loop.

How a trainer plugs in (`a2pcli/train/audio2motion/` is the worked example; `a2p train <name>` calls it):

 1. Options. Take `TrainOptions` (the flags every `a2p train <name>` has: --data, -o, --preset, --epochs,
    --batch-size, --lr, --val-speakers, --resume, --seed, --device). The trainer's own knobs live in its
    presets (a frozen dataclass per preset, in a dict by name), with a `tiny` preset that runs the whole loop
    (prepare, train, validate, checkpoint, resume, export) in well under a minute on a CPU, for CI.
 2. Check, then start. `check_options(opts, presets)` and `check_output_folder(opts.output)` before anything
    heavy (they create nothing); `sources_for(opts.data)` (a2pcli.train.clips); only then
    `load_checkpoint(find_checkpoint(opts.resume), name)`: checkpoints are untrusted input, read with
    `torch.load(weights_only=True)` and checked; whatever the trainer takes from their meta and tensors
    (presets, splits, arrays) it checks too, raising InputError naming the file with remedy START_AGAIN.
    `start_runtime(opts.device, job)` picks the device.
 3. Data. `a2pcli.train.clips`: videos with speech under the data folders, their landmarks, head pose and
    log-mel prepared once and kept in the shared data cache (every trainer reads the same entries);
    `split_speakers`, `sampling_weights`.
 4. The loop. Write a class with the `Trainer` methods: `batches(epoch, rng)` yields this process's batches
    of one epoch (every random draw from `rng`, which `fit` seeds from the run's seed and the epoch),
    `loss(net, batch)` returns the loss tensor and its named parts as floats (`net` may be the network
    wrapped for several processes: call it, do not reach into its attributes), `validate(ema)` the metrics
    of one epoch (a dict merged into the log row), `describe_epoch(row, epochs)` the line shown after each
    epoch, and `checkpoint_extra()` what the trainer needs to resume: JSON-able meta and named tensors.
    Then, inside `with output_folder(opts.output) as out:`, `start_log(out, resumed)`, build the network
    after `seed_all(opts.seed)`, `make_ema`, `make_optimizer`, `restore(...)` when resuming, and call
    `fit(trainer, net, ema, optim, state, LoopSettings(...), Run(out, runtime, opts.seed), reporter)`: it runs
    the epochs, the optimiser steps with the warm-up + cosine schedule, gradient clipping, the weight
    average, validation, the log row and the checkpoint after every epoch. tests/test_train_core.py has a
    trainer in 30 lines.
 5. Export. The averaged weights as safetensors plus config.json in the model folder (`write_model_files`;
    the network's constructor arguments are its config, loaded strictly by the model's own module), then
    return the summary dict the CLI prints with --json.
 6. The command. In a2pcli/cli/cmd_train.py, a function beside `audio2motion` with the same option aliases,
    which builds `TrainOptions` with `train_options(...)` and calls `run_trainer(...)`; register it. Then one
    line in a2pcli/train/components.py puts it in `a2p train all` (with a `prepare_data` entry when its data can
    be prepared ahead, into the shared cache).

Several processes (torchrun: `torchrun --nproc-per-node N -m a2pcli train <name> ...`): every process runs
the same `train` with the same options. `start_runtime` joins the process group (NCCL on GPUs, gloo on the
CPU) and gives each process its device (cuda:LOCAL_RANK) and `Runtime.rank`/`world_size`; `fit` wraps the
network in DistributedDataParallel (gradients averaged over the processes at every step), checks that the
processes agree on the run and on the weights after each epoch, averages the logged losses, and leaves
validation, the log and the checkpoint to rank 0 (`runtime.is_main`); `output_folder` and `start_log` touch
the folder on rank 0 only. What a trainer does for it:
  - `batches`: draw this process's part of each global batch, `runtime.per_process(batch_size)` items (the
    batch size is the whole step's, so the recipe and the learning rate stay those of one process), from this
    process's share of the data, `runtime.shard(weights, derive_seed(seed, "shard", epoch))` (a new split
    every epoch; every item when there is one process, so one process trains exactly as before). `rng` is
    already this process's own (`Runtime.seed` adds the rank only when there are several).
  - after `fit`: export on rank 0 only; the others return `process_summary(...)`.
  - prepare data through `a2pcli.train.clips` (its cache is safe for concurrent processes: one prepares an
    entry under a lock, the others wait and read it).
With one process none of this changes anything: same draws, same losses, same weights.

Files in the model folder: `train_log.jsonl` (one JSON object per epoch), `checkpoints/last.pt` (see
`save_checkpoint`), and the trainer's exported files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from a2pcli import limits
from a2pcli.errors import A2PError, InputError, OutputError
from a2pcli.launch import Launch, join_process_group, launch_from_env, too_few_gpus
from a2pcli.progress import Reporter

CHECKPOINT_DIR, LAST_CHECKPOINT = "checkpoints", "last.pt"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_FORMAT = "a2p-train-checkpoint"
CHECKPOINT_VERSION = 2  # 1: a pickled dict of Python and numpy objects (refused: it cannot be read safely)
LR_FLOOR = 0.05  # the cosine schedule decays to this share of the peak learning rate
EMA_RAMP = 10  # the weight average's decay ramps up as (1 + step) / (EMA_RAMP + step)
START_AGAIN = "start again without --resume (or with a new -o)"


@dataclass(frozen=True)
class TrainOptions:
    """What the user chose (the flags of every `a2p train <name>`). None: the preset's value."""

    data: tuple[Path, ...]
    output: Path
    preset: str = "default"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    val_speakers: tuple[str, ...] | None = None
    resume: Path | None = None
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class LoopSettings:
    """The optimisation knobs `fit` needs, taken from a trainer's preset."""

    epochs: int
    steps_per_epoch: int
    lr: float  # peak learning rate (AdamW)
    warmup_steps: int
    weight_decay: float
    grad_clip: float  # max gradient norm (0: no clipping)
    ema_decay: float  # weight average for validation and export (0: off)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class RunState:
    """Where a run stands; a checkpoint holds it as JSON."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    history: list[dict] = field(default_factory=list)  # the log rows so far


# --- checks before any work ---------------------------------------------------------------------------


def check_options(opts: TrainOptions, presets: Iterable[str]) -> None:
    """Every user input that can be checked without reading a file; InputError naming it."""
    presets = list(presets)
    if opts.preset not in presets:
        raise InputError(f"unknown preset {opts.preset!r}", subject="--preset", remedy=f"one of: {', '.join(presets)}")
    if not opts.data:
        raise InputError("no data folder given", subject="--data", remedy="--data takes a folder of videos")
    for folder in opts.data:
        if not Path(folder).is_dir():
            what = "is not a folder" if Path(folder).exists() else "not found"
            raise InputError(f"data folder {what}", subject=str(folder), remedy="--data takes a folder of videos")
    for flag, value in (("--epochs", opts.epochs), ("--batch-size", opts.batch_size)):
        if value is not None and not 1 <= value <= 1_000_000:
            raise InputError(f"must be a whole number from 1 to 1000000, got {value}", subject=flag)
    if opts.lr is not None and not (math.isfinite(opts.lr) and 0 < opts.lr <= 1):
        raise InputError(f"must be a number above 0 and at most 1, got {opts.lr}", subject="--lr")
    limits.SEED.check("--seed", opts.seed)  # the same range as every command's --seed
    if opts.val_speakers is not None and not any(s.strip() for s in opts.val_speakers):
        raise InputError("names no speaker", subject="--val-speakers", remedy="e.g. --val-speakers spk01,spk07")
    own = resumes_own_folder(opts.resume, opts.output)
    if opts.resume is not None and not Path(opts.resume).exists() and not own:
        raise InputError("checkpoint not found", subject=str(opts.resume), remedy="check the --resume path")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (None when `path` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            return missing
        missing = p
    return missing


def check_output_folder(output: Path) -> None:
    """Fail early when the model folder cannot be made or written; creates nothing."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError("is a file; the model output is a folder", subject=str(output), remedy="choose another -o")
    missing = _first_missing(output.absolute())
    where = missing.parent if missing is not None else output
    if not where.is_dir():
        raise OutputError("is not a folder", subject=str(where), remedy="choose another -o")
    probe = where / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"  # unique across processes and nodes
    try:  # a real write: permission bits alone do not tell (root, read-only mounts, full disks)
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write the model folder ({exc.strerror})", subject=str(output),
                          remedy="choose another -o") from exc


@contextlib.contextmanager
def output_folder(output: Path) -> Iterator[Path]:
    """Create the model folder for a run. When the run fails (or is interrupted) before its first checkpoint,
    a folder this run created is removed again, so a failed `train` leaves nothing behind. Under torchrun only
    rank 0 creates (and removes) it."""
    output = Path(output)
    if launch_from_env().rank != 0:  # the other processes of a torchrun run write nothing
        yield output
        return
    created = _first_missing(output.absolute())
    output.mkdir(parents=True, exist_ok=True)
    try:
        yield output
    except BaseException:
        if created is not None and not (output / CHECKPOINT_DIR / LAST_CHECKPOINT).exists():
            shutil.rmtree(created, ignore_errors=True)
        raise


# --- runtime: the device and the processes ---------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Where this process trains. Without torchrun: rank 0 of 1."""

    device: str  # "cpu" or "cuda:N"
    device_name: str  # for messages
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that validates, logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def seed(self, seed: int, *parts) -> int:
        """A seed for one purpose (e.g. "epoch", 3); each process gets its own once there are several."""
        if self.world_size == 1:
            return derive_seed(seed, *parts)
        return derive_seed(seed, *parts, "rank", self.rank)

    def per_process(self, n: int) -> int:
        """This process's share of `n` items (a global batch): the first n % world_size processes take one more."""
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def shard(self, weights, seed: int) -> list[int]:
        """This process's share of len(weights) items (clips) for one epoch, as sorted indices.

        One process: every item. Several: the items, shuffled by `seed` (the same on every process: derive it
        from the run's seed and the epoch, not with `self.seed`), are dealt out one by one to the share that
        weighs least so far, so the shares are disjoint, cover every item and weigh about the same; with
        fewer items than processes each process takes one item (items are then shared)."""
        n = len(weights)
        if self.world_size == 1:
            return list(range(n))
        order = np.random.default_rng(seed).permutation(n)
        if n <= self.world_size:
            return [int(order[self.rank % n])] if n else []
        loads = np.zeros(self.world_size)
        mine = []
        for i in order:
            k = int(np.argmin(loads))
            loads[k] += float(weights[i])
            if k == self.rank:
                mine.append(int(i))
        return sorted(mine)


def check_batch_split(runtime: Runtime, batch_size: int, reporter: Reporter) -> None:
    """InputError when a batch cannot give every process an item; a warning when it splits unevenly (the
    averaged gradients then weigh the items of the smaller parts a little more)."""
    n = runtime.world_size
    if batch_size < n:
        raise InputError(f"a batch of {batch_size} cannot give each of the {n} processes an item",
                         subject="--batch-size", remedy=f"use a batch of at least {n} (a multiple of {n} is best)")
    if batch_size % n:
        reporter.warn(f"the batch of {batch_size} splits unevenly over {n} processes; a multiple of {n} weighs every "
                      "item the same")


PROCESS_GROUP_TIMEOUT_S = 3600  # how long a process waits for the others at a collective step (rank 0
                                # validates and checkpoints between epochs while the others wait)


def start_runtime(device_spec: str, job) -> Runtime:
    """The device for this run (a2pcli.device.preflight). `job`: a2pcli.device.JobEstimate.

    Under torchrun with several processes: joins the process group (NCCL on GPUs, gloo on the CPU); each
    process trains on the GPU of its local rank, cuda:LOCAL_RANK (`--device auto` or `cuda`), or on the CPU
    (`--device cpu`, or auto without a GPU)."""
    from a2pcli.device import preflight

    launch = launch_from_env()
    if launch.world_size == 1:
        choice = preflight(device_spec, job)
        return Runtime(choice.device, choice.name)
    choice = _process_device(device_spec, launch.local_rank, job)
    _join_process_group(choice.device, launch)
    return Runtime(choice.device, choice.name, launch.rank, launch.world_size, launch.local_rank)


def _process_device(device_spec: str, local_rank: int, job):
    """cuda:LOCAL_RANK, or the CPU, for one process of several."""
    from a2pcli.device import parse_device, preflight, visible_cuda_count

    kind, index = parse_device(device_spec)
    if index is not None:
        raise InputError("under torchrun each process trains on the GPU of its local rank (cuda:LOCAL_RANK)",
                         subject=f"--device {device_spec}",
                         remedy="use --device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if kind == "cpu" or (kind == "auto" and visible_cuda_count() == 0):
        return preflight("cpu", job)
    count = visible_cuda_count()
    if count and local_rank >= count:
        raise too_few_gpus(count, local_rank, "or train on the CPU with --device cpu")
    return preflight(f"cuda:{local_rank}" if count else "cuda", job)


def _join_process_group(device: str, launch: Launch) -> None:
    """torch.distributed's default group: NCCL between GPUs, gloo between CPU processes."""
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.set_device(device)
    join_process_group(launch, "nccl" if cuda else "gloo", PROCESS_GROUP_TIMEOUT_S)


def data_parallel(net, runtime: Runtime):
    """What the loss runs: `net` itself in one process; with several, `net` wrapped in
    DistributedDataParallel, whose backward averages the gradients over the processes (every parameter
    must take part in the loss)."""
    if not runtime.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [int(runtime.device.split(":")[1])] if runtime.device.startswith("cuda") else None
    return DistributedDataParallel(net, device_ids=ids)


def mean_over_processes(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    """The mean of each value over the processes (the values themselves in one process)."""
    if not runtime.distributed or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = list(values)  # the same on every process: the trainer's loss parts
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return {k: float(v) / runtime.world_size for k, v in zip(keys, t.tolist())}


def check_processes_agree(runtime: Runtime, what: str, values: dict[str, float],
                          remedy: str = "give every process the same data folders (at the same paths on every "
                          "node), options and checkpoint") -> None:
    """A2PError naming `what` when the processes hold different numbers (every process must see the same
    data, the same checkpoint and the same options; they would otherwise wait on each other forever)."""
    if not runtime.distributed:
        return
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=runtime.device)
    lo, hi = t.clone(), t.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    differ = [k for k, a, b in zip(keys, lo.tolist(), hi.tolist()) if a != b]
    if differ:
        raise A2PError(f"the processes differ in their {what} ({', '.join(differ)})", subject="torchrun",
                       remedy=remedy)


def weights_checksum(net) -> float:
    """One number for all the weights (float64 sum of every parameter's values, weighted by position): equal
    weights give equal numbers, and different ones almost surely do not."""
    import torch

    with torch.no_grad():
        return float(sum((p.detach().double().flatten() * (1 + i)).sum() for i, p in enumerate(net.parameters())))


# --- seeds, schedule, weight average ---------------------------------------------------------------------


def derive_seed(seed: int, *parts) -> int:
    """A 32-bit seed from the run's seed and a purpose, stable across runs and machines."""
    return zlib.crc32(" ".join(map(str, (seed, *parts))).encode())


def seed_all(seed: int) -> None:
    """Seed torch and numpy's global generators (network initialisation)."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def warmup_cosine(step: int, total: int, peak: float, warmup: int) -> float:
    """Learning rate at `step`: linear warm-up to `peak`, then cosine decay to LR_FLOOR * peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def make_ema(net, decay: float):
    """A frozen copy of `net` to average the weights into; `net` itself when decay is 0 (no averaging)."""
    import copy

    if not decay:
        return net
    ema = copy.deepcopy(net)
    for q in ema.parameters():
        q.requires_grad_(False)
    return ema


def update_ema(ema, net, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * net, with d ramping up over the first steps; buffers are copied."""
    import torch

    if ema is net:
        return
    d = min(decay, (1 + step) / (EMA_RAMP + step))
    with torch.no_grad():
        for e, q in zip(ema.parameters(), net.parameters()):
            e.mul_(d).add_(q.detach(), alpha=1 - d)
        for e, q in zip(ema.buffers(), net.buffers()):
            e.copy_(q)


def make_optimizer(net, loop: LoopSettings):
    import torch

    return torch.optim.AdamW(net.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)


# --- checkpoints -----------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint as read back: only tensors, numbers and strings (torch.load(weights_only=True)).

    On disk: {"format", "version", "trainer", "meta": JSON string (RunState and the trainer's own meta),
    "model", "ema", "optimizer": state dicts, "tensors": the trainer's named tensors}."""

    path: Path
    trainer: str
    meta: dict  # the trainer's meta, plus "epoch", "step", "history"
    model: dict
    ema: dict  # empty when the run has no weight average
    optimizer: dict
    tensors: dict

    @property
    def state(self) -> RunState:
        return RunState(int(self.meta["epoch"]), int(self.meta["step"]), list(self.meta["history"]))


def resumes_own_folder(resume: Path | None, output: Path | None) -> bool:
    """--resume names the run's own model folder (-o): continue its run when it has a checkpoint, start one when
    it has none, so the same command serves the first start and every restart (torchrun --max-restarts)."""
    return resume is not None and output is not None and Path(resume).absolute() == Path(output).absolute()


def find_checkpoint(resume: Path | None, output: Path | None = None) -> Path | None:
    """The checkpoint file --resume names: a file, or a model folder's checkpoints/last.pt; None without
    --resume, and when --resume is the model folder `output` itself and it holds no checkpoint yet."""
    if resume is None:
        return None
    if resumes_own_folder(resume, output) and not (Path(output) / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file():
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST_CHECKPOINT if (path / CHECKPOINT_DIR).is_dir() else path / LAST_CHECKPOINT
    if not path.is_file():
        raise InputError("no checkpoint there", subject=str(path), remedy="give a checkpoint file or a model folder "
                         f"with {CHECKPOINT_DIR}/{LAST_CHECKPOINT}")
    return path


def save_checkpoint(output: Path, trainer: str, net, ema, optim, state: RunState, meta: dict,
                    tensors: dict) -> Path:
    """Write <output>/checkpoints/last.pt atomically. `meta` must be JSON-able; `tensors`: name -> tensor or
    numpy array."""
    import torch

    from a2pcli.outputs import atomic_path

    folder = Path(output) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "epoch": state.epoch, "step": state.step, "history": state.history}
    data = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "trainer": trainer,
        "meta": json.dumps(doc, default=_json_default),
        "model": net.state_dict(), "ema": ema.state_dict() if ema is not net else {},
        "optimizer": optim.state_dict(),
        "tensors": {k: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                    for k, v in tensors.items()},
    }
    path = folder / LAST_CHECKPOINT
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(data, tmp)
    return path


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-able")


def load_checkpoint(path: Path, trainer: str) -> Checkpoint:
    """Read a checkpoint without running any code from it, and check its layout. InputError naming the file
    when it is unreadable, of another format or trainer, or holds anything but tensors, numbers and text."""
    import torch

    path = Path(path)

    def bad(why: str) -> InputError:
        return InputError(why, subject=str(path), remedy=START_AGAIN)

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an untrusted file: any failure to parse is "not a checkpoint"
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise bad("holds Python objects, not only tensors and numbers: refused, as reading it could run "
                      "code (checkpoints of earlier a2p versions are like this too)") from None
        raise bad(f"is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise bad("is not an a2p training checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise bad(f"is a checkpoint of format version {data.get('version')!r}; this a2p reads version "
                  f"{CHECKPOINT_VERSION}")
    if data.get("trainer") != trainer:
        raise bad(f"is a checkpoint of {data.get('trainer')!r}, not {trainer!r}")
    try:
        meta = json.loads(data["meta"])
        ckpt = Checkpoint(path, trainer, meta, data["model"], data["ema"], data["optimizer"], data["tensors"])
        state = ckpt.state
        ok = (state.epoch >= 0 and state.step >= 0 and all(isinstance(r, dict) for r in state.history)
              and all(_tensor_dict(d) for d in (ckpt.model, ckpt.ema, ckpt.tensors))
              and isinstance(ckpt.optimizer, dict))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise bad("is damaged or not an a2p training checkpoint (its parts are missing or of the wrong kind)")
    for name, t in (*ckpt.model.items(), *ckpt.ema.items()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise bad(f"holds non-finite weights ({name})")
    return ckpt


def _tensor_dict(d) -> bool:
    import torch

    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def restore(ckpt: Checkpoint, net, ema, optim) -> RunState:
    """Load the network, the weight average and the optimiser from a checkpoint (strict: every tensor present
    with its shape). InputError naming the file when they do not fit this network."""
    try:
        net.load_state_dict(ckpt.model, strict=True)
        if ema is not net:
            ema.load_state_dict(ckpt.ema, strict=True)
        _check_optimizer_state(ckpt.optimizer, optim)
        optim.load_state_dict(ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"does not fit this network ({first[:200]})", subject=str(ckpt.path),
                         remedy=START_AGAIN) from None
    return ckpt.state


def _check_optimizer_state(saved: dict, optim) -> None:
    """Every saved per-parameter tensor has its parameter's shape (load_state_dict does not check)."""
    import torch

    params = [p for g in optim.param_groups for p in g["params"]]
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optim.param_groups]:
        raise ValueError("optimizer parameter groups differ")
    for g in groups:
        for name, v in g.items():
            items = v if isinstance(v, (list, tuple)) else [v]
            if name != "params" and not all(x is None or isinstance(x, (bool, int, float)) for x in items):
                raise TypeError(f"optimizer setting {name} is not a number")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"optimizer setting {name} is not finite")
    index = {i: params[n] for n, i in enumerate(i for g in groups for i in g["params"])}
    for i, st in saved["state"].items():
        for name, t in st.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"optimizer state {name} is not a tensor")
            if t.ndim and t.shape != index[i].shape:
                raise ValueError(f"optimizer state {name} has shape {tuple(t.shape)}, the parameter "
                                 f"{tuple(index[i].shape)}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"optimizer state {name} is not finite")


def write_model_files(folder: Path, config: dict, tensors: dict, metadata: dict[str, str] | None = None,
                      weights_file: str = "model.safetensors", config_file: str = "config.json") -> None:
    """An exported model: `tensors` (name -> tensor) as safetensors with string `metadata`, and `config` (the
    network's constructor arguments, format, version, meta) as JSON; each file written atomically."""
    from safetensors.torch import save_file

    from a2pcli.outputs import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(folder / weights_file, overwrite=True) as tmp:
        save_file(plain, str(tmp), metadata=metadata)
    with atomic_path(folder / config_file, overwrite=True) as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=_json_default) + "\n")


# --- the log -------------------------------------------------------------------------------------------


def start_log(output: Path, resumed: bool) -> None:
    """A fresh run starts the log again; a resumed one appends to it (rank 0 alone writes the log)."""
    if not resumed and launch_from_env().rank == 0:
        with contextlib.suppress(FileNotFoundError):
            (Path(output) / LOG_FILE).unlink()


def rewrite_log(output: Path, history: list[dict]) -> None:
    """The log as a resumed run's checkpoint has it (a run stopped between its log row and its checkpoint
    would otherwise log that epoch twice)."""
    from a2pcli.outputs import atomic_path

    with atomic_path(Path(output) / LOG_FILE, overwrite=True) as tmp:
        tmp.write_text("".join(json.dumps(row, default=_json_default) + "\n" for row in history))


def append_log(output: Path, row: dict) -> None:
    with open(Path(output) / LOG_FILE, "a") as f:
        f.write(json.dumps(row, default=_json_default) + "\n")


# --- the loop --------------------------------------------------------------------------------------------


class Trainer(Protocol):
    """What a trainer gives `fit` (see the module docstring)."""

    name: str  # "audio2motion": the checkpoint's trainer

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator:
        """This process's batches for one epoch (at least steps_per_epoch of them)."""

    def loss(self, net, batch) -> tuple[object, dict[str, float]]:
        """(total loss tensor to minimise, named parts as floats for the log)."""

    def validate(self, ema) -> dict:
        """Metrics after an epoch, merged into the log row (rank 0 only)."""

    def describe_epoch(self, row: dict, epochs: int) -> str:
        """The line reported after each epoch."""

    def checkpoint_extra(self) -> tuple[dict, dict]:
        """(JSON-able meta, named tensors) the trainer needs to resume."""


@dataclass(frozen=True)
class Run:
    """One run's identity: where it writes, on what, with which seed."""

    output: Path
    runtime: Runtime
    seed: int


def fit(trainer: Trainer, net, ema, optim, state: RunState, loop: LoopSettings, run: Run,
        reporter: Reporter) -> RunState:
    """Train from `state` to loop.epochs; after each epoch validate, log, checkpoint and report (rank 0). A
    resumed run's log is first rewritten from its checkpoint's history.

    With several processes (torchrun) every process runs this with the same network, state and settings:
    the gradients are averaged over them at each step (DistributedDataParallel), so every process holds the
    same weights (checked after each epoch); the logged training losses are the means over the processes."""
    runtime = run.runtime
    model = data_parallel(net, runtime)
    check_processes_agree(runtime, "run (data, options or checkpoint)",
                          {"steps_per_epoch": loop.steps_per_epoch, "epochs": loop.epochs, "epoch": state.epoch,
                           "step": state.step})
    if runtime.is_main and state.history:
        rewrite_log(run.output, state.history)
    reporter.stage("train", loop.total_steps)
    reporter.advance(state.step)
    for epoch in range(state.epoch + 1, loop.epochs + 1):
        row = train_epoch(trainer, net, ema, optim, state, loop, run, epoch, reporter, model=model)
        if runtime.distributed:
            check_processes_agree(runtime, "weights after an epoch", {"weights": weights_checksum(net)},
                                  remedy="report it as a bug: the averaged steps should keep them equal")
        if runtime.is_main:
            row.update(trainer.validate(ema))
        state.history.append(row)
        state.epoch = epoch
        if runtime.is_main:
            append_log(run.output, row)
            meta, tensors = trainer.checkpoint_extra()
            save_checkpoint(run.output, trainer.name, net, ema, optim, state, meta, tensors)
            reporter.info(trainer.describe_epoch(row, loop.epochs))
    return state


def train_epoch(trainer: Trainer, net, ema, optim, state: RunState, loop: LoopSettings, run: Run, epoch: int,
                reporter: Reporter, model=None) -> dict:
    """One epoch of optimiser steps -> its log row (epoch, step, lr, seconds, train_loss, train_<part>...).
    Every random draw derives from the run's seed and the epoch, so a resumed run repeats it exactly.
    `model`: what the loss runs (`data_parallel(net, ...)`; `net` itself when None)."""
    import torch

    model = net if model is None else model
    rng = np.random.default_rng(run.runtime.seed(run.seed, "epoch", epoch))
    torch.manual_seed(run.runtime.seed(run.seed, "torch", epoch))
    batches = iter(trainer.batches(epoch, rng))
    net.train()
    sums: dict[str, float] = {"loss": 0.0}
    t0 = time.perf_counter()
    for _ in range(loop.steps_per_epoch):
        batch = next(batches)
        for group in optim.param_groups:
            group["lr"] = warmup_cosine(state.step, loop.total_steps, loop.lr, loop.warmup_steps)
        total, parts = trainer.loss(model, batch)
        optim.zero_grad(set_to_none=True)
        total.backward()
        if loop.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), loop.grad_clip)
        optim.step()
        state.step += 1
        update_ema(ema, net, loop.ema_decay, state.step)
        sums["loss"] += float(total.detach())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        reporter.advance()
    sums = mean_over_processes(sums, run.runtime)
    row = {"epoch": epoch, "step": state.step,
           "lr": round(warmup_cosine(state.step - 1, loop.total_steps, loop.lr, loop.warmup_steps), 6),
           "seconds": round(time.perf_counter() - t0, 1)}
    row.update({f"train_{k}": round(v / loop.steps_per_epoch, 4) for k, v in sums.items()})
    return row


def process_summary(runtime: Runtime, state: RunState, elapsed_s: float) -> dict:
    """What a process other than rank 0 returns from a trainer's `train` (it exports nothing)."""
    return {"rank": runtime.rank, "world_size": runtime.world_size, "device": runtime.device,
            "epochs": state.epoch, "steps": state.step, "elapsed_s": round(elapsed_s, 1)}
