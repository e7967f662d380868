"""What the pipeline calls return: typed results whose `to_json()` is what `--json` prints.

    VideoResult   one video (audio2video, vid2vid, pose2vid)
    PoseResult    one .pose (extract-pose), with the Motion itself
    Failure       one item that failed: its inputs, its planned output, the error
    RunResult     every item of a run: {"outputs": [...], "failed": [...]}, the same shape for every command
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from a2pcli.errors import A2PError

EXIT_OK = 0


def input_names(inputs: dict) -> dict[str, str]:
    """Inputs by name as JSON strings: a path, or "<array WxH...>" for an array given through the Python API."""
    return {k: f"<array {'x'.join(map(str, v.shape))}>" if hasattr(v, "shape") else str(v) for k, v in inputs.items()}


@dataclass(frozen=True)
class VideoResult:
    """A rendered video and the renderer's figures."""

    output: Path
    inputs: dict[str, Path]  # by name: portrait, and audio, driving or motion
    frames: int
    fps: float
    duration_s: float
    size: tuple[int, int]  # width, height
    device: str
    renderer: str
    notes: list[str]
    timings_s: dict[str, float]
    elapsed_s: float
    frames_per_s: float
    details: dict = field(default_factory=dict)  # the renderer's own: batch_size, vram_estimate_gb, steps, cfg...

    @classmethod
    def from_summary(cls, output: Path, inputs: dict[str, Path], renderer: str, summary: dict) -> VideoResult:
        common = {k: summary[k] for k in ("frames", "fps", "duration_s", "device", "notes", "timings_s", "elapsed_s",
                                          "frames_per_s")}
        rest = {k: v for k, v in summary.items() if k not in common and k not in ("size", "renderer")}
        return cls(Path(output), dict(inputs), size=tuple(summary["size"]), renderer=renderer, details=rest, **common)

    def to_json(self) -> dict:
        return {"output": str(self.output), **input_names(self.inputs), "frames": self.frames, "fps": self.fps,
                "duration_s": self.duration_s, "size": list(self.size), "device": self.device,
                "renderer": self.renderer, **self.details, "notes": list(self.notes), "timings_s": self.timings_s,
                "elapsed_s": self.elapsed_s, "frames_per_s": self.frames_per_s}


@dataclass(frozen=True)
class PoseResult:
    """An extracted motion (motion.Motion), written to `output` when one was asked for, and its figures."""

    output: Path | None
    input: Path
    motion: object = field(repr=False)
    fps: float
    duration_s: float
    frame_size: tuple[int, int]
    frames: int
    face_frames: int
    no_face_frames: int
    leading_no_face_frames: int
    multi_face_frames: int
    pose_range_deg: dict[str, list[float]]  # yaw, pitch, roll: [min, max]
    elapsed_s: float
    frames_per_s: float

    @classmethod
    def from_summary(cls, output: Path | None, motion, summary: dict) -> PoseResult:
        fields = {k: v for k, v in summary.items() if k not in ("input", "frame_size")}
        return cls(output, Path(summary["input"]), motion, frame_size=tuple(summary["frame_size"]), **fields)

    def to_json(self) -> dict:
        return {"input": str(self.input), "fps": self.fps, "duration_s": self.duration_s,
                "frame_size": list(self.frame_size), "frames": self.frames, "face_frames": self.face_frames,
                "no_face_frames": self.no_face_frames, "leading_no_face_frames": self.leading_no_face_frames,
                "multi_face_frames": self.multi_face_frames, "pose_range_deg": self.pose_range_deg,
                "elapsed_s": self.elapsed_s, "frames_per_s": self.frames_per_s,
                "output": None if self.output is None else str(self.output)}


@dataclass(frozen=True)
class Failure:
    inputs: dict[str, Path]  # by name; the first is the item's main input (portrait, video)
    output: Path | None
    error: A2PError
    key: object = None  # the item's key (items.Item.key)

    @property
    def exit_code(self) -> int:
        return self.error.exit_code

    @property
    def message(self) -> str:
        return self.error.one_line()

    def to_json(self) -> dict:
        names = input_names(self.inputs)
        return {"input": next(iter(names.values()), None), **names,
                "output": None if self.output is None else str(self.output), "error": self.error.one_line(),
                "exit_code": self.exit_code}


@dataclass
class RunResult:
    """Every item of one run, in order: what was made and what failed."""

    outputs: list = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0, or the first failure's exit code."""
        return self.failed[0].exit_code if self.failed else EXIT_OK

    def to_json(self) -> dict:
        return {"outputs": [r.to_json() for r in self.outputs], "failed": [f.to_json() for f in self.failed]}
