"""extract-pose: a video (or an image) -> landmarks and head pose of every frame, a reusable .pose file.

    result = extract_pose("actor.mp4", "actor.pose")        # result.motion: the motion.Motion
    run = extract_poses([a.mp4, b.mp4], Path("poses"), job)  # one .pose each, failures reported, not raised
"""

from __future__ import annotations

from pathlib import Path

from a2pcli.pipeline.items import Item, run_items
from a2pcli.pipeline.options import ExtractJob, check_extract_job, check_input_file
from a2pcli.pipeline.plan import check_output, name_poses
from a2pcli.pipeline.results import PoseResult, RunResult
from a2pcli.pipeline.write import write_output
from a2pcli.progress import Reporter

COMMAND = "extract-pose"


def _extract(source: Path, output: Path | None, job: ExtractJob, reporter: Reporter) -> PoseResult:
    from a2pcli.extract import extract_motion
    from a2pcli.motion import save_pose

    found = {}

    def make(tmp: Path) -> dict:
        motion, summary = extract_motion(source, job.extract, reporter)
        save_pose(motion, tmp)
        found["motion"] = motion
        return summary

    if output is None:
        motion, summary = extract_motion(source, job.extract, reporter)
        return PoseResult.from_summary(None, motion, summary)
    summary = write_output(output, make, COMMAND, {"video": source}, job)
    return PoseResult.from_summary(output, found["motion"], summary)


def check_pose(source: Path, output: Path | None, job: ExtractJob) -> None:
    """The input file exists and the output may be written: before any work."""
    check_extract_job(job)
    check_input_file(Path(source), "video or image")
    if output is not None:
        check_output(Path(output), {"video": Path(source)}, job.output)


def extract_pose(source: Path | str, output: Path | str | None = None, job: ExtractJob = ExtractJob(), *,
                 reporter: Reporter | None = None) -> PoseResult:
    """Landmarks (478 per frame), head pose and expression of every frame of `source` (a video ffmpeg decodes,
    or an image: a one-frame motion), written to `output` as a .pose file when given. Raises an A2PError subclass
    naming the input at fault (no face, not a video...)."""
    check_pose(Path(source), output, job)
    return _extract(Path(source), None if output is None else Path(output), job, reporter or Reporter())


def extract_poses(sources: list[Path], output: Path | None, job: ExtractJob = ExtractJob(), *,
                  reporter: Reporter | None = None) -> RunResult:
    """One .pose per input: beside it, in the `output` directory, or `output` itself (one input). A failing input
    is reported and the others are extracted."""
    check_extract_job(job)
    reporter = reporter or Reporter()
    items = [Item({"video": Path(src)}, out) for src, out in zip(sources, name_poses(list(sources), output))]

    def check(item: Item) -> None:
        check_pose(item.inputs["video"], item.output, job)

    return run_items(items, lambda item: _extract(item.inputs["video"], item.output, job, reporter), reporter, check)
