"""`a2p extract-pose`: videos or images -> `.pose` files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli.cli.app import finish, report_failure, session
from a2pcli.cli.options import JsonOut, OutputPath, Overwrite, Progress, ProgressMode, Quiet
from a2pcli.errors import A2PError, InputError, OutputError

POSE_SUFFIX = ".pose"


def plan_outputs(inputs: list[Path], output: Path | None) -> list[Path]:
    """Where each input's .pose goes: beside it, into the -o directory, or the -o file (one input)."""
    if output is None:
        outs = [p.with_suffix(POSE_SUFFIX) for p in inputs]
    elif output.is_dir() or str(output).endswith(("/", "\\")):
        if not output.is_dir():
            raise OutputError("output directory does not exist", subject=str(output), remedy="create it first")
        outs = [output / (p.stem + POSE_SUFFIX) for p in inputs]
    elif len(inputs) > 1:
        raise InputError(
            "with several inputs, -o must be an existing directory", subject=str(output), remedy="mkdir it first"
        )
    else:
        outs = [output]
    seen: dict[Path, Path] = {}
    for src, out in zip(inputs, outs):
        if out.resolve() in seen:
            raise InputError(f"{src} and {seen[out.resolve()]} would both write {out}", subject=str(src),
                             remedy="rename one input or run them separately")
        seen[out.resolve()] = src
    return outs


def _human(s: dict) -> str:
    r = s["pose_range_deg"]
    filled = f", {s['no_face_frames']} without a face (filled)" if s["no_face_frames"] else ""
    return (
        f"{s['input']} -> {s['output']}: {s['frames']} frames at {s['fps']:g} fps ({s['duration_s']:g} s){filled}; "
        f"yaw {r['yaw'][0]:+.1f}..{r['yaw'][1]:+.1f}, pitch {r['pitch'][0]:+.1f}..{r['pitch'][1]:+.1f}, "
        f"roll {r['roll'][0]:+.1f}..{r['roll'][1]:+.1f} deg; {s['elapsed_s']:.1f} s ({s['frames_per_s']:g} frames/s)"
    )


def extract_pose(
    inputs: Annotated[list[Path], typer.Argument(help="Videos (any container ffmpeg reads) or images.")],
    output: OutputPath = None,
    smooth: Annotated[float, typer.Option(help="Temporal smoothing: Gaussian sigma in frames (0: off).")] = 0.0,
    start: Annotated[Optional[float], typer.Option(help="Start time in seconds.")] = None,
    end: Annotated[Optional[float], typer.Option(help="End time in seconds.")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Resample to this frame rate (default: the video's).")] = None,
    max_gap: Annotated[float, typer.Option(help="Interpolate face-less gaps up to this many seconds.")] = 0.5,
    overwrite: Overwrite = False,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Face landmarks (478) and head pose of every frame -> a reusable .pose file.

    Writes ref.pose next to ref.mp4 unless -o says otherwise; several inputs go to an -o directory.
    """
    from a2pcli.extract import ExtractOptions, extract_motion
    from a2pcli.motion import save_pose
    from a2pcli.outputs import atomic_path, check_output
    from a2pcli.progress import Reporter

    opts = ExtractOptions(smooth=smooth, start=start, end=end, fps=fps, max_gap_s=max_gap)
    outs = plan_outputs(inputs, output)
    for out in outs:
        check_output(out, overwrite)
    results, failures = [], []
    with session("extract-pose", progress, quiet) as sink:
        for src, out in zip(inputs, outs):
            try:
                with atomic_path(out, overwrite) as tmp:
                    motion, summary = extract_motion(src, opts, Reporter(sink))
                    save_pose(motion, tmp)
                results.append({**summary, "output": str(out)})
            except A2PError as exc:
                if len(inputs) == 1:
                    raise
                failures.append((src, exc))
                report_failure(sink, exc.one_line(), exc.exit_code)
    summary = {"outputs": results, "failed": [{"input": str(s), "error": e.one_line()} for s, e in failures]}
    finish(sink, summary, json_out, "\n".join(_human(r) for r in results), quiet)
    if failures:
        first = failures[0][1]
        raise typer.Exit(first.exit_code)


def register(app: typer.Typer) -> None:
    app.command("extract-pose")(extract_pose)
