"""`a2p batch jobs.jsonl -o outdir/`: a manifest of jobs, one JSON object per line (a2pcli.pipeline.manifest).

Each line names its command, its inputs by name and any option by its long flag name; it is read exactly
as the command's own flags are (the command's parser checks types and choices, the job it makes every number's
range), so an option means the same in a manifest as on the command line. Under torchrun, or as a scheduler's
array task (--shard), each process runs its share (a2pcli.pipeline.shards); `run_jobs` is also how
`a2p audio2video` runs under torchrun.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from a2pcli.cli.options import JsonOut, Overwrite, Progress, ProgressMode, Quiet
from a2pcli.errors import A2PError, InputError, OutputError

# the batch's own; and --split: a batch gives each job one process (one clip on several: a command under torchrun)
NOT_IN_A_MANIFEST = ("--output", "--json", "--progress", "--quiet", "--overwrite", "--meta", "--split")
OUTPUT_OPTIONS = ("--frames-dir",)  # paths of outputs: relative to -o (inputs: to the manifest's folder)


def _command(name: str) -> click.Command:
    from a2pcli.cli.app import app

    return typer.main.get_command(app).commands[name]


def _param(command: click.Command, flag: str) -> click.Parameter | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts), None)


def _path(value, base: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def _argv(command: click.Command, options: dict, manifest_dir: Path, outdir: Path) -> list[str]:
    """A line's options -> the command line that says the same."""
    argv = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        param = _param(command, flag)
        if flag in NOT_IN_A_MANIFEST or param is None:
            raise InputError(f"{key!r} is not an option of {command.name} in a manifest", subject=key,
                             remedy=f"see `a2p {command.name} --help`; output names go in \"output\"")
        if param.is_flag:
            if not isinstance(value, bool):
                raise InputError(f"{key!r} is a flag: true or false, not {value!r}", subject=key)
            argv += [flag] if value else []
        elif value is not None:
            if isinstance(param.type, click.Path):
                value = _path(value, outdir if flag in OUTPUT_OPTIONS else manifest_dir)
            elif flag == "--model" and (manifest_dir / str(value)).exists():
                value = _path(value, manifest_dir)
            argv += [flag, str(value)]
    return argv


def parse_line(line: int, obj: dict, manifest_dir: Path, outdir: Path):
    """One manifest line -> manifest.BatchJob, or manifest.BadLine saying why it is none."""
    from a2pcli.cli.cmd_extract import extract_job
    from a2pcli.cli.cmd_render import drive_job, talk_job
    from a2pcli.pipeline.manifest import INPUTS, BadLine, BatchJob, default_output
    from a2pcli.pipeline.options import check_drive_job, check_extract_job, check_talk_job

    obj = dict(obj)
    command = obj.pop("command", None)
    if command not in INPUTS:
        return BadLine(line, InputError(f"line {line}: unknown command {command!r}", subject="command",
                                        remedy=f"use one of {', '.join(INPUTS)}"))
    missing = [name for name in INPUTS[command] if obj.get(name) in (None, "")]
    if missing:
        return BadLine(line, InputError(f"line {line}: {command} needs {' and '.join(repr(m) for m in missing)}",
                                        subject=command), command)
    inputs = {name: Path(_path(obj.pop(name), manifest_dir)) for name in INPUTS[command]}
    output = obj.pop("output", None)
    try:
        cmd = _command(command)
        args = [str(p) for p in inputs.values()] + _argv(cmd, obj, manifest_dir, outdir)
        with cmd.make_context(command, args) as ctx:
            params = dict(ctx.params)
        if command == "audio2video":
            job = talk_job(**params)
            check_talk_job(job)
        elif command == "extract-pose":
            job = extract_job(**params)
            check_extract_job(job)
        else:
            job = drive_job(**params)
            check_drive_job(job)
        output = Path(_path(output, outdir)) if output else default_output(command, inputs, outdir)
    except click.ClickException as exc:
        return BadLine(line, InputError(f"line {line}: {exc.format_message()}", subject=command), command, inputs)
    except A2PError as exc:
        return BadLine(line, type(exc)(f"line {line}: {exc.message}", subject=exc.subject, remedy=exc.remedy),
                       command, inputs)
    audio = params.get("audio") if command == "pose2vid" else None
    return BatchJob(line, command, inputs, output, job, audio)


def describe_job(r: dict) -> str:
    """One line for a finished job (its results record)."""
    took = f"; {r['elapsed_s']:.1f} s" if r["status"] == "done" else " (made by an earlier run)"
    return f"line {r['line']}: {r['command']} -> {r['output']}: {r['status']}{took}"


Shard = Annotated[
    Optional[str],
    typer.Option("--shard", metavar="K/N|slurm", help="Run only share K of N of the jobs (K from 0 to N-1): one task "
                 "of a job scheduler's array. `slurm` reads SLURM_ARRAY_TASK_ID, _MIN and _COUNT. Each task writes "
                 "<results>.partK-of-N; the last to finish writes the results file.", show_default=False),
]
Collect = Annotated[
    bool, typer.Option("--collect", help="Run no job: write the results file from the parts the --shard tasks "
                       "wrote so far, naming the lines none of them holds yet.")
]


def batch(
    manifest: Annotated[Path, typer.Argument(help="Jobs: one JSON object per line (see the README's manifest "
                                             "section).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the outputs (created if missing; "
                                         "relative \"output\" names are inside it).", show_default=False)],
    results: Annotated[
        Optional[Path],
        typer.Option("--results", help="The results file: one JSON line per job (default: "
                     "<output>/<manifest>.results.jsonl)."),
    ] = None,
    shard: Shard = None,
    collect: Collect = False,
    overwrite: Overwrite = False,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Run a manifest of jobs (audio2video, vid2vid, pose2vid, extract-pose), resuming where an earlier run stopped.

    Each line: {"command": ..., its inputs by name, "output" (optional), any option by its long flag name}.
    Relative input paths are relative to the manifest's folder. A job whose output exists beside a sidecar
    (<output>.json) recording the same inputs and options is skipped; a bad line or a failed job is
    reported and the others still run.

    \b
    Example: a2p batch jobs.jsonl -o renders/
    On N GPUs:  torchrun --standalone --nproc-per-node N -m a2pcli batch jobs.jsonl -o renders/
    As array task K of N:  a2p batch jobs.jsonl -o renders/ --shard K/N   (then --collect, or the last task)
    """
    from a2pcli.launch import launch_from_env
    from a2pcli.pipeline.manifest import read_manifest
    from a2pcli.pipeline.shards import find_shard

    launch = launch_from_env()
    with rank_errors(launch):
        place = find_shard(shard)
        if collect and (place.array is not None or launch.distributed):
            raise InputError("collects the parts of an array's tasks after them: it runs no job", subject="--collect",
                             remedy="run it once, without --shard and without torchrun")
        if not manifest.is_file():
            raise InputError("manifest not found", subject=str(manifest), remedy="check the path")
        if output.exists() and not output.is_dir():
            raise OutputError("is a file, expected the output folder", subject=str(output))
        if not output.parent.is_dir():
            raise OutputError("its parent folder does not exist", subject=str(output), remedy="create it first")
        output.mkdir(exist_ok=True)
        results = results or output / f"{manifest.stem}.results.jsonl"
        base = manifest.resolve().parent
        entries = [parse_line(n, obj, base, output.resolve()) if isinstance(obj, dict) else _bad(n, obj)
                   for n, obj in read_manifest(manifest)]
    if collect:
        _collect(entries, results, quiet, json_out)
        return
    run_jobs("batch", entries, results, place, overwrite, progress, quiet, json_out)


def run_jobs(command: str, entries: list, results: Path | None, place, overwrite: bool, progress: ProgressMode,
             quiet: bool, json_out: bool) -> None:
    """Run this process's share of `entries` (pipeline.shards.run_shard) with its display; the group's rank 0
    prints the summary of every process's jobs. Exits with this process's first failure."""
    from a2pcli.cli.app import finish_run, session
    from a2pcli.pipeline.shards import run_shard
    from a2pcli.progress import Reporter

    several = place.launch.distributed
    tag = {"rank": place.launch.rank} if several else None
    with rank_errors(place.launch), session(command, progress, quiet, describe_job, tag) as sink:
        outcome = run_shard(entries, results, place, overwrite=overwrite, reporter=Reporter(sink))
    try:
        if place.launch.is_main:
            _report_all(outcome, quiet or progress == ProgressMode.json, json_out)
        finish_run(sink, outcome.run, json_out=False)
    finally:
        outcome.meet()


def _report_all(outcome, quiet: bool, json_out: bool) -> None:
    """Rank 0: what every process of the run made (a line on stderr) and, with --json, their records on stdout."""
    rows, place = outcome.rows, outcome.shard
    if not quiet and (rows or outcome.written):
        counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in ("done", "skipped", "failed"))
        who = f"shard {place.array[0]}/{place.array[1]}: " if place.array else ""
        on = f" on {place.launch.world_size} processes" if place.launch.distributed else ""
        where = f"; results in {' and '.join(map(str, outcome.written))}" if outcome.written else ""
        sys.stderr.write(f"{who}{len(rows)} jobs{on}: {counts}{where}\n")
    if json_out:
        sys.stdout.write(json.dumps(outcome.summary(), indent=2, default=str) + "\n")
        sys.stdout.flush()


def _collect(entries: list, results: Path, quiet: bool, json_out: bool) -> None:
    """--collect: the results file from the parts of the array's tasks."""
    from a2pcli.pipeline.shards import MISSING, OK_STATUSES, collect_parts, first_failure, summarise

    rows, tasks = collect_parts(results, entries)
    if not quiet:
        for r in rows:
            if r["status"] not in OK_STATUSES:
                sys.stderr.write(f"line {r['line']}: {r['status']}: {r['error']}\n")
        missing = sum(r["status"] == MISSING for r in rows)
        sys.stderr.write(f"{results}: {len(rows)} lines from the parts of {tasks} tasks"
                         f"{f', {missing} not run yet' if missing else ''}\n")
    if json_out:
        sys.stdout.write(json.dumps(summarise(rows), indent=2, default=str) + "\n")
    failure = first_failure(rows)
    if failure is not None:
        raise typer.Exit(failure[1])


@contextlib.contextmanager
def rank_errors(launch) -> Iterator[None]:
    """Under torchrun, a failure that every process meets alike (bad input, a different manifest) is reported by
    rank 0 alone; the others exit with its code quietly. Failures of a process's own machine or device are
    reported by that process too, and so is everything by the first process of each machine."""
    from a2pcli.errors import EnvironmentProblem

    if launch.rank == 0:
        yield
        return
    try:
        yield
    except A2PError as exc:
        if isinstance(exc, EnvironmentProblem) or launch.local_rank == 0:
            sys.stderr.write(f"error: rank {launch.rank}: {exc.one_line()}\n")
        raise typer.Exit(exc.exit_code) from None


def _bad(line: int, error: A2PError):
    from a2pcli.pipeline.manifest import BadLine

    return BadLine(line, error)


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
