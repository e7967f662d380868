"""`a2p extract-pose`: videos or images -> `.pose` files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli import limits
from a2pcli.cli.app import finish_run, session
from a2pcli.cli.options import JsonOut, OutputPath, Overwrite, Progress, ProgressMode, Quiet, span
from a2pcli.extract import ExtractOptions
from a2pcli.pipeline.options import ExtractJob, OutputOptions


def describe_pose(s: dict) -> str:
    """One line for a finished .pose (its --json result)."""
    r = s["pose_range_deg"]
    filled = f", {s['no_face_frames']} without a face (filled)" if s["no_face_frames"] else ""
    return (
        f"{s['input']} -> {s['output']}: {s['frames']} frames at {s['fps']:g} fps ({s['duration_s']:g} s){filled}; "
        f"yaw {r['yaw'][0]:+.1f}..{r['yaw'][1]:+.1f}, pitch {r['pitch'][0]:+.1f}..{r['pitch'][1]:+.1f}, "
        f"roll {r['roll'][0]:+.1f}..{r['roll'][1]:+.1f} deg; {s['elapsed_s']:.1f} s ({s['frames_per_s']:g} frames/s)"
    )


def extract_job(*, smooth, start, end, fps, max_gap, overwrite, **_) -> ExtractJob:
    """extract-pose's parameters (as click parses them) -> its job."""
    return ExtractJob(ExtractOptions(smooth=smooth, start=start, end=end, fps=fps, max_gap_s=max_gap),
                      OutputOptions(overwrite=overwrite))


def extract_pose(
    inputs: Annotated[list[Path], typer.Argument(help="Videos (any container ffmpeg reads) or images.")],
    output: OutputPath = None,
    smooth: Annotated[float, typer.Option(help=f"Temporal smoothing: Gaussian sigma in frames, {span(limits.SMOOTH)} "
                                          "(0: off).")] = ExtractOptions.smooth,
    start: Annotated[Optional[float], typer.Option(help="Start time in seconds.")] = ExtractOptions.start,
    end: Annotated[Optional[float], typer.Option(help="End time in seconds, after --start.")] = ExtractOptions.end,
    fps: Annotated[Optional[float], typer.Option(help=f"Resample to this frame rate, {span(limits.FPS)} (default: the "
                                                 "video's).")] = ExtractOptions.fps,
    max_gap: Annotated[float, typer.Option(help="Interpolate face-less gaps up to this many seconds, "
                                           f"{span(limits.MAX_GAP_S)}.")] = ExtractOptions.max_gap_s,
    overwrite: Overwrite = OutputOptions.overwrite,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Face landmarks (478) and head pose of every frame -> a reusable .pose file.

    Writes ref.pose next to ref.mp4 unless -o says otherwise; several inputs go to an -o directory.
    """
    import click

    from a2pcli.pipeline.poses import extract_poses
    from a2pcli.progress import Reporter

    job = extract_job(**click.get_current_context().params)
    with session("extract-pose", progress, quiet, describe_pose) as sink:
        run = extract_poses(inputs, output, job, reporter=Reporter(sink))
    finish_run(sink, run, json_out)


def register(app: typer.Typer) -> None:
    app.command("extract-pose")(extract_pose)
