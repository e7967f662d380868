"""Large batches from a manifest: one job per line, resumable, with a results file.

    jobs.jsonl:  {"command": "audio2video", "portrait": "face.png", "audio": "speech.wav", "seed": 3}
                 {"command": "vid2vid", "portrait": "face.png", "driving": "actor.mp4", "output": "a.mp4"}
                 {"command": "pose2vid", "portrait": "face.png", "motion": "actor.pose", "audio": "s.wav"}
                 {"command": "extract-pose", "video": "actor.mp4"}

The CLI (`a2p batch`) turns each line into a `BatchJob` (its options by their long flag names, as the
commands read them); `run_batch` runs them in manifest order. Every output is written atomically with its
sidecar (`<output>.json`), and a job whose output exists beside a sidecar that records the same command,
inputs and options is skipped: a killed batch continues where it stopped. A bad line or a failed job is
reported and the batch goes on; `write_rows` writes the results file, one JSON line per job (inputs, output,
status, error, timings), in manifest order.

Several processes can share a manifest: `jobs_for_rank` says which jobs are one process's (a pure function of
the job count, the process's rank and the number of processes); a2pcli.pipeline.shards runs a process's share
under torchrun or a job scheduler's array and joins the processes' records into the results file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from a2pcli.errors import A2PError, InputError
from a2pcli.outputs import atomic_path
from a2pcli.pipeline.items import Item, run_items
from a2pcli.pipeline.models import Models
from a2pcli.pipeline.options import DriveJob, ExtractJob, OutputOptions, TalkJob, check_input_file, resolved
from a2pcli.pipeline.plan import name_poses, name_videos
from a2pcli.pipeline.results import RunResult, input_names
from a2pcli.pipeline.sidecar import job_record, matches, records_job
from a2pcli.progress import Reporter

INPUTS = {  # each command's inputs, by the names a manifest line gives them
    "audio2video": ("portrait", "audio"),
    "vid2vid": ("portrait", "driving"),
    "pose2vid": ("portrait", "motion"),
    "extract-pose": ("video",),
}
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass(frozen=True)
class BatchJob:
    line: int  # 1-based line of the manifest
    command: str
    inputs: dict[str, Path]  # by name (INPUTS[command]), absolute
    output: Path
    job: TalkJob | DriveJob | ExtractJob
    audio: Path | None = None  # pose2vid's --audio


@dataclass(frozen=True)
class BadLine:
    """A manifest line that is not a job (not JSON, an unknown command, a missing input name, a bad option)."""

    line: int
    error: A2PError
    command: str | None = None
    inputs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobRecord:
    """One line of the results file."""

    line: int
    command: str | None
    inputs: dict
    output: Path | None
    status: str  # done, skipped (made by an earlier run) or failed
    error: str | None = None
    exit_code: int = 0
    elapsed_s: float = 0.0
    timings_s: dict = field(default_factory=dict)
    rank: int | None = None  # the process that ran it, 0 .. processes - 1 (None: none has yet)

    @property
    def message(self) -> str | None:
        return self.error

    def to_json(self) -> dict:
        return {"line": self.line, "command": self.command, "inputs": input_names(self.inputs),
                "output": None if self.output is None else str(self.output), "status": self.status,
                "error": self.error, "exit_code": self.exit_code, "elapsed_s": self.elapsed_s,
                "timings_s": self.timings_s, "rank": self.rank}


def read_manifest(path: Path) -> list[tuple[int, dict | A2PError]]:
    """Each non-empty line: (its number, the JSON object it holds, or the InputError saying why it holds none)."""
    out = []
    for number, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            out.append((number, InputError(f"line {number} is not JSON ({exc.msg})", subject=str(path))))
            continue
        if not isinstance(obj, dict):
            out.append((number, InputError(f"line {number} is not a JSON object", subject=str(path))))
            continue
        out.append((number, obj))
    return out


def default_output(command: str, inputs: dict[str, Path], outdir: Path) -> Path:
    """The output the command's CLI would write for these inputs, inside `outdir`."""
    if command == "extract-pose":
        return name_poses([inputs["video"]], Path(outdir))[0]
    first, second = (inputs[name] for name in INPUTS[command])
    return name_videos([(first, second)], Path(outdir))[0]


def jobs_for_rank(n_jobs: int, rank: int = 0, world: int = 1) -> list[int]:
    """The jobs (indices into the manifest's job list) that process `rank` of `world` runs: every world-th job
    from the rank-th, so each process gets its share of every part of the manifest."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(range(rank, n_jobs, world))


def _record_inputs(job: BatchJob) -> dict:
    """The inputs a job's sidecar records (the same the command itself records)."""
    from a2pcli.pipeline.reenact import drive_inputs
    from a2pcli.pipeline.talking import talk_inputs

    if job.command == "audio2video":
        return talk_inputs(job.inputs["portrait"], job.inputs["audio"], job.job)
    if job.command in ("vid2vid", "pose2vid"):
        return drive_inputs(job.command, job.inputs["portrait"], job.inputs[INPUTS[job.command][1]], job.audio)
    return dict(job.inputs)


def _check_job(job: BatchJob) -> None:
    """The command's own checks (its inputs, its output), before any job runs."""
    from a2pcli.pipeline.poses import check_pose
    from a2pcli.pipeline.reenact import check_drive
    from a2pcli.pipeline.talking import check_pair

    i = job.inputs
    if job.command == "audio2video":
        check_pair(i["portrait"], i["audio"], job.output, job.job, job.job.video.frames_dir)
    elif job.command in ("vid2vid", "pose2vid"):
        check_drive(job.command, i["portrait"], i[INPUTS[job.command][1]], job.output, job.job, job.audio)
    else:
        check_pose(i["video"], job.output, job.job)


def _run_job(job: BatchJob, reporter: Reporter, models: Models):
    from a2pcli.pipeline.poses import extract_pose
    from a2pcli.pipeline.reenact import pose2vid, vid2vid
    from a2pcli.pipeline.talking import audio2video

    i = job.inputs
    if job.command == "audio2video":
        return audio2video(i["portrait"], i["audio"], job.output, job.job, reporter=reporter, models=models)
    if job.command == "vid2vid":
        return vid2vid(i["portrait"], i["driving"], job.output, job.job, reporter=reporter, models=models)
    if job.command == "pose2vid":
        return pose2vid(i["portrait"], i["motion"], job.output, job.job, audio=job.audio, reporter=reporter,
                        models=models)
    return extract_pose(i["video"], job.output, job.job, reporter=reporter)


def _for_batch(job: BatchJob, overwrite: bool) -> BatchJob:
    """Every job of a batch writes its sidecar (what resuming relies on)."""
    return replace(job, job=replace(job.job, output=OutputOptions(overwrite=overwrite, meta=True)))


def _record_of(job) -> dict:
    options = job.job if isinstance(job.job, ExtractJob) else resolved(job.job)
    return job_record(job.command, _record_inputs(job), options)


def run_batch(entries: list[BatchJob | BadLine], *, overwrite: bool = False, rank: int = 0, world: int = 1,
              reporter: Reporter | None = None, models: Models | None = None) -> tuple[list[JobRecord], RunResult]:
    """Run this process's share of the manifest's jobs (all of them with one process), in manifest order:
    skip those already made, make the others (a failure is recorded and the batch goes on). Returns one
    JobRecord per job, in manifest order, and the run's result."""
    reporter = reporter or Reporter()
    models = models or Models()
    mine = [entries[i] for i in jobs_for_rank(len(entries), rank, world)]
    mine = [_for_batch(e, overwrite) if isinstance(e, BatchJob) else e for e in mine]
    by_line = {e.line: e for e in mine}
    owner: dict[Path, int] = {}
    skip: set[int] = set()
    stale: set[int] = set()  # jobs whose own sidecar outlived their output (a batch killed between the two)
    items = [Item(e.inputs, e.output if isinstance(e, BatchJob) else None, e.line) for e in mine]

    def check(item: Item) -> None:
        entry = by_line[item.key]
        if isinstance(entry, BadLine):
            raise entry.error
        first = owner.setdefault(entry.output.resolve(), entry.line)
        if first != entry.line:
            raise InputError(f"line {entry.line} writes the same output as line {first}", subject=str(entry.output),
                             remedy='give one of them another "output"')
        for name, path in _record_inputs(entry).items():
            check_input_file(path, name)
        record = _record_of(entry)
        if matches(entry.output, record):
            skip.add(entry.line)
            return
        if not entry.output.exists() and records_job(entry.output, record):
            stale.add(entry.line)
        _check_job(_for_batch(entry, overwrite=True) if entry.line in stale else entry)

    done: dict[int, JobRecord] = {}

    def make(item: Item) -> JobRecord:
        entry = by_line[item.key]
        if entry.line in skip:
            done[entry.line] = JobRecord(entry.line, entry.command, entry.inputs, entry.output, SKIPPED, rank=rank)
            return done[entry.line]
        if entry.line in stale:
            entry = _for_batch(entry, overwrite=True)
        t0 = time.perf_counter()
        result = _run_job(entry, reporter, models)
        timings = getattr(result, "timings_s", {})
        done[entry.line] = JobRecord(entry.line, entry.command, entry.inputs, entry.output, DONE,
                                     elapsed_s=round(time.perf_counter() - t0, 3), timings_s=timings, rank=rank)
        return done[entry.line]

    run = run_items(items, make, reporter, check)
    for failure in run.failed:
        entry = by_line[failure.key]
        done[entry.line] = JobRecord(entry.line, entry.command, entry.inputs, failure.output, FAILED,
                                     failure.error.one_line(), failure.exit_code, rank=rank)
    ordered = [done[e.line] for e in mine]
    return ordered, RunResult([r for r in ordered if r.status != FAILED], [r for r in ordered if r.status == FAILED])


def write_rows(path: Path, rows: list[dict]) -> None:
    """Results lines (JobRecord.to_json() objects), in manifest order, written atomically."""
    with atomic_path(Path(path), overwrite=True) as tmp:
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in sorted(rows, key=lambda r: r["line"])))


def read_rows(path: Path) -> list[dict]:
    """The lines of a results file (or of a part of one); [] when it cannot be read as one."""
    try:
        rows = [json.loads(t) for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("line"), int) and "status" in r]


def talk_jobs(portraits: list[Path], audios: list[Path], output: Path | None, job: TalkJob) -> list[BatchJob]:
    """audio2video's pairs as batch jobs: every portrait speaks every audio file, each video named and placed as
    `audio2video` places it (talking.audio2video_pairs), a frames folder per video with --frames-dir."""
    from a2pcli.pipeline.options import check_talk_job
    from a2pcli.pipeline.plan import frames_dir_for

    check_talk_job(job)
    pairs = [(Path(p), Path(a)) for a in audios for p in portraits]
    outputs = name_videos(pairs, output)
    several = len(pairs) > 1
    return [BatchJob(k, "audio2video", {"portrait": p, "audio": a}, out,
                     replace(job, video=replace(job.video, frames_dir=frames_dir_for(job.video.frames_dir, out,
                                                                                     several))))
            for k, ((p, a), out) in enumerate(zip(pairs, outputs), 1)]
