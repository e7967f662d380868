"""A manifest's jobs shared out over several processes: torchrun's (one per GPU, on one machine or several), a
job scheduler's array tasks (`--shard K/N`), or both (an array of torchrun runs).

    shard = find_shard("3/8")                     # this process's place: its torchrun group and array task
    outcome = run_shard(entries, results, shard, overwrite=False, reporter=reporter)
    ... report outcome.summary() ...
    outcome.meet()                                # under torchrun: no process leaves before rank 0 has reported

Each process runs every count-th job from its index (manifest.jobs_for_rank): the shares are disjoint and cover
the manifest, and lines added at its end keep the earlier ones where they were. Every output is written
atomically with its sidecar and a job already made is skipped, so a run started again after a kill (or by
torchrun's --max-restarts) makes only the rest, whichever process a job falls to.

Under torchrun each process uses one GPU of its node, the local_rank-th (round robin when a node starts more
processes than it has GPUs, which then share them), pinned through CUDA_VISIBLE_DEVICES before CUDA starts so
that every job's `auto` or `cuda` lands on it; on a machine without GPUs the processes run on the CPU. Each
loads its models once. The processes meet through torch.distributed (gloo, whatever the device: the jobs need
no collectives) only to check that they read the same manifest, and at the end to hand their records to
rank 0, which writes the results file. That last wait lasts as long as the slowest process's remaining jobs,
so the group's timeout is WAIT_S. A job that fails is recorded and its process goes on to the end; a process
that dies (a crash, a kill) makes torchrun stop the others.

Array tasks never meet: task K of N writes its records to `<results>.part{K}-of-{N}`, and the task that finds
every line of the manifest in the parts (the last to finish) joins them into the results file. `collect`
joins whatever parts there are at any time, naming the lines none holds yet (`a2p batch --collect`).
"""

from __future__ import annotations

import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from a2pcli.errors import EXIT_FAILED, InputError
from a2pcli.launch import Launch, all_gather_json, barrier, join_process_group, launch_from_env, node_gpu, node_gpus
from a2pcli.launch import pin_gpu
from a2pcli.pipeline.manifest import DONE, SKIPPED, BadLine, BatchJob, JobRecord, read_rows, run_batch, write_rows
from a2pcli.pipeline.models import Models
from a2pcli.progress import Reporter

WAIT_S = 7 * 24 * 3600  # how long a process waits at the end for the slowest one's remaining jobs
FAILED_EXIT_GRACE_S = 3.0  # a process with failed jobs leaves this long after the others (see ShardOutcome.meet)
MISSING = "missing"  # a results line no process has reported yet
OK_STATUSES = (DONE, SKIPPED)
SLURM = "slurm"  # --shard slurm: the task's place from SLURM_ARRAY_TASK_ID, _MIN and _COUNT
SHARD_FORM = "K/N (K from 0 to N-1) or slurm"


@dataclass(frozen=True)
class Shard:
    """This process's place among all the processes of one batch."""

    launch: Launch = field(default_factory=Launch)  # its torchrun group (rank 0 of 1 without torchrun)
    array: tuple[int, int] | None = None  # (K, N): task K of a scheduler's array of N (--shard K/N)

    @property
    def index(self) -> int:
        """0 .. count - 1 over every process of every array task."""
        return (self.array[0] if self.array else 0) * self.launch.world_size + self.launch.rank

    @property
    def count(self) -> int:
        return (self.array[1] if self.array else 1) * self.launch.world_size

    @property
    def label(self) -> str:
        parts = [f"shard {self.array[0]}/{self.array[1]}"] if self.array else []
        if self.launch.distributed:
            parts.append(f"rank {self.launch.rank} of {self.launch.world_size}")
        return ", ".join(parts) or "one process"


def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int] | None:
    """--shard: "K/N" (task K of N, from 0), or "slurm" (the array task SLURM started this process as)."""
    if text is None:
        return None
    env = os.environ if env is None else env
    if text.strip().lower() == SLURM:
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
        values = [env.get(n, "").strip() for n in names]
        if not all(v.isdigit() for v in values):
            raise InputError("SLURM_ARRAY_TASK_ID, _MIN and _COUNT are not all set", subject="--shard slurm",
                             remedy="start it as an array task (sbatch --array=0-7), or give --shard K/N")
        task, first, count = map(int, values)
        return _checked(task - first, count, f"--shard slurm (task {task} of {first}..{first + count - 1})")
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise InputError(f"expected {SHARD_FORM}, got {text!r}", subject="--shard", remedy="e.g. --shard 0/4")
    return _checked(int(match.group(1)), int(match.group(2)), f"--shard {text}")


def _checked(k: int, n: int, subject: str) -> tuple[int, int]:
    if not 0 <= k < n:
        raise InputError(f"shard {k} of {n} does not exist: K goes from 0 to N-1", subject=subject,
                         remedy="e.g. --shard 0/4 .. --shard 3/4")
    return k, n


def find_shard(text: str | None = None) -> Shard:
    """This process's Shard: torchrun's variables and --shard."""
    return Shard(launch_from_env(), parse_shard(text))


@dataclass
class ShardOutcome:
    shard: Shard
    records: list[JobRecord]  # this process's jobs
    run: object  # results.RunResult of this process's jobs: its exit code is theirs
    rows: list[dict]  # the jobs of every process of the torchrun group, as results lines, in manifest order
    written: list[Path] = field(default_factory=list)  # the results file and/or the array task's part it wrote

    def summary(self) -> dict:
        """{"outputs": [...], "failed": [...]} of every job in `rows`."""
        return summarise(self.rows)

    def meet(self) -> None:
        """Under torchrun, wait until every process gets here (after rank 0 has written and printed: torchrun
        stops every process still running as soon as one exits with a failure). Then a process whose jobs
        failed waits FAILED_EXIT_GRACE_S more, so that the others, with nothing left to do, end first and are
        not reported as killed."""
        if self.shard.launch.distributed:
            barrier()
            if self.run.failed:
                time.sleep(FAILED_EXIT_GRACE_S)


def summarise(rows: list[dict]) -> dict:
    return {"outputs": [r for r in rows if r["status"] in OK_STATUSES],
            "failed": [r for r in rows if r["status"] not in OK_STATUSES]}


def run_shard(entries: list[BatchJob | BadLine], results: Path | None, shard: Shard, *, overwrite: bool = False,
              reporter: Reporter | None = None, models: Models | None = None) -> ShardOutcome:
    """Run this process's share of `entries` (manifest.run_batch), then write the results (`results` None: none):
    the group's rank 0 writes the file, or its array task's part (and the whole file when it is the last)."""
    reporter = reporter or Reporter()
    if shard.launch.distributed:
        _start_group(shard, entries, reporter)
        entries = [own_gpu_only(e) for e in entries]
    records, run = run_batch(entries, overwrite=overwrite, rank=shard.index, world=shard.count, reporter=reporter,
                             models=models)
    rows = [r.to_json() for r in records]
    if shard.launch.distributed:
        rows = sorted((row for part in all_gather_json(rows) for row in part), key=lambda r: r["line"])
    outcome = ShardOutcome(shard, records, run, rows)
    if results is not None and shard.launch.is_main:
        outcome.written = _write(Path(results), rows, shard, entries)
    return outcome


def _start_group(shard: Shard, entries: list, reporter: Reporter) -> None:
    """This process's GPU, the process group, and the check that every process read the same jobs."""
    launch = shard.launch
    gpu = node_gpu(launch.local_rank)
    if gpu is not None:
        shared = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > len(node_gpus())
        pin_gpu(gpu)
        reporter.info(f"{shard.label}: GPU {gpu} of this machine{' (shared with other processes)' if shared else ''}")
    join_process_group(launch, "gloo", WAIT_S)
    mine = [fingerprint(entries), list(shard.array or ())]  # as JSON carries it
    if any(theirs != mine for theirs in all_gather_json(mine)):
        raise InputError("the processes read different manifests or --shard values", subject="torchrun",
                         remedy="give every process the same manifest file and options")


def own_gpu_only(entry: BatchJob | BadLine) -> BatchJob | BadLine:
    """Under torchrun a job runs on its process's GPU: one that names a GPU by number (cuda:N) is refused."""
    render = getattr(getattr(entry, "job", None), "render", None)
    if render is None or not str(render.device).strip().lower().startswith("cuda:"):
        return entry
    return BadLine(entry.line, InputError("under torchrun each process uses the GPU of its local rank",
                                          subject=f"--device {render.device}", remedy='use "device": "auto" or "cuda", '
                                          "and choose the GPUs with CUDA_VISIBLE_DEVICES"), entry.command, entry.inputs)


def fingerprint(entries: list) -> int:
    """One number for the jobs of a manifest (their lines, commands and output names)."""
    text = repr([(e.line, getattr(e, "command", None), Path(e.output).name if isinstance(e, BatchJob) else None)
                 for e in entries])
    return zlib.crc32(text.encode())


# --- results of array tasks ----------------------------------------------------------------------------------


def results_part(results: Path, k: int, n: int) -> Path:
    """Where array task K of N writes its records."""
    return Path(results).with_name(f"{Path(results).name}.part{k}-of-{n}")


def part_counts(results: Path) -> list[int]:
    """The N of every `<results>.part{K}-of-{N}` beside `results`."""
    pattern = re.compile(re.escape(Path(results).name) + r"\.part(\d+)-of-(\d+)")
    folder = Path(results).parent
    found = (pattern.fullmatch(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return sorted({int(m.group(2)) for m in found if m})


def collect(results: Path, n: int, entries: list) -> list[dict]:
    """A results line per manifest entry from the parts of N tasks there are; an entry no part holds (its task
    has not finished, or ran an older manifest) is `missing`."""
    held: dict[int, dict] = {}
    for k in range(n):
        part = results_part(results, k, n)
        if part.is_file():
            held.update({row["line"]: row for row in read_rows(part)})
    rows = []
    for entry in entries:
        row = held.get(entry.line)
        if row is None or row.get("command") != getattr(entry, "command", None):
            output = entry.output if isinstance(entry, BatchJob) else None
            row = JobRecord(entry.line, getattr(entry, "command", None), dict(getattr(entry, "inputs", {})), output,
                            MISSING, "no task has reported it yet (its task has not finished, or ran another "
                            "manifest)", EXIT_FAILED).to_json()
        rows.append(row)
    return rows


def collect_parts(results: Path, entries: list) -> tuple[list[dict], int]:
    """`a2p batch --collect`: the results file written from the parts beside it (those of one array of N tasks);
    returns its lines and N."""
    counts = part_counts(results)
    if not counts:
        raise InputError(f"no part of {Path(results).name} to collect", subject=str(Path(results).parent),
                         remedy="run the array's tasks first (a2p batch ... --shard K/N)")
    if len(counts) > 1:
        raise InputError(f"parts of arrays of {' and '.join(map(str, counts))} tasks lie beside it",
                         subject=str(results), remedy=f"delete the parts ({Path(results).name}.partK-of-N) of the "
                         "array that is no longer wanted")
    rows = collect(results, counts[0], entries)
    write_rows(results, rows)
    return rows, counts[0]


def _write(results: Path, rows: list[dict], shard: Shard, entries: list) -> list[Path]:
    if shard.array is None:
        write_rows(results, rows)
        return [results]
    k, n = shard.array
    part = results_part(results, k, n)
    write_rows(part, rows)
    every = collect(results, n, entries)
    if any(r["status"] == MISSING for r in every):
        return [part]
    write_rows(results, every)  # the last task to finish: the whole file
    return [part, results]


def first_failure(rows: list[dict]) -> tuple[str, int] | None:
    """(error, exit code) of the first line that is neither done nor skipped."""
    bad = next((r for r in rows if r["status"] not in OK_STATUSES), None)
    return None if bad is None else (bad["error"] or bad["status"], bad["exit_code"] or EXIT_FAILED)

