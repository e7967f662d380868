"""What a job makes: one frozen options object per command, composed of the stages' own options.

    TalkJob     audio2video: portrait + speech -> talking-head video
    DriveJob    vid2vid and pose2vid: portrait + driving motion -> video
    ExtractJob  extract-pose: video or image -> .pose file

Every default is defined once: in the stage options a job composes (PortraitOptions, TalkOptions,
RetargetOptions, DiffusionOptions, ExtractOptions) or in the job itself. The CLI's flags take their
defaults from here. A job's `seed` drives every random choice of the run: `resolved(job)` writes it into the
composed stage options' own `seed` fields (and the portrait's size into the diffusion renderer's `size`).

Every number of a job is checked when the job is made (`check_values`, against the ranges of a2pcli.limits): a
TalkJob, DriveJob or ExtractJob with `fps=100000` or `seed=-1` cannot exist, whether it comes from the command
line, an `a2p batch` manifest line or the Python API (InputError naming the flag, the rule and the value).
`check_talk_job`, `check_drive_job` and `check_extract_job` also refuse a bad combination and a missing file
before anything loads (InputError naming the option, ModelError for a model that does not exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from a2pcli import limits
from a2pcli.aniportrait.render import DiffusionOptions
from a2pcli.encode import MAX_CRF
from a2pcli.errors import InputError, ModelError
from a2pcli.extract import ExtractOptions
from a2pcli.extract import check_options as check_extract_options
from a2pcli.pipeline.portrait import PortraitOptions
from a2pcli.retarget import REGIONS, RetargetOptions
from a2pcli.talk import TalkOptions

POSE_SUFFIXES = (".pose", ".npy")  # a2p's .pose (from extract-pose) or an AniPortrait head-pose template
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")  # auto: fp16 on a GPU, fp32 on the CPU
DIFFUSION_SIZE_STEP = 8  # the diffusion renderer's sides are multiples of 8 (the VAE's downsampling)
CRF = limits.Range(0, MAX_CRF, whole=True)  # x264's quality scale


class RendererName(str, Enum):
    embedded = "embedded"  # the built-in warp renderer (a2pcli.render), CPU or GPU
    aniportrait = "aniportrait"  # AniPortrait's diffusion renderer (a2pcli.aniportrait)


class MotionSource(str, Enum):
    a2p = "a2p"  # the shipped audio2motion model (or --model)
    aniportrait = "aniportrait"  # AniPortrait's audio2mesh and audio2pose (its weights)


DrivenRegion = Enum("DrivenRegion", {name: name for name in REGIONS}, type=str)
DrivenRegion.__doc__ = "What the driving motion controls (retarget.REGIONS)."


class TemplateRegion(str, Enum):
    pose = "pose"
    pose_eyes = "pose+eyes"
    pose_eyes_brows = "pose+eyes+brows"


@dataclass(frozen=True)
class RenderOptions:
    """Which renderer draws the frames, and where. `mouth_model` is the embedded renderer's; `diffusion` holds the
    diffusion renderer's own knobs (its seed and size are the job's: see `resolved`)."""

    renderer: RendererName = RendererName.embedded
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: str = "auto"  # frames rendered at once: a positive number, or auto (as many as fit)
    mouth_model: str | None = None  # the embedded renderer's mouth model: a registry name or a folder; None: shipped
    diffusion: DiffusionOptions = field(default_factory=DiffusionOptions)


@dataclass(frozen=True)
class VideoOptions:
    crf: int = 18  # x264 quality: 0 lossless .. 51 worst; 18 looks lossless
    frames_dir: Path | None = None  # also write every frame as a PNG here


@dataclass(frozen=True)
class OutputOptions:
    overwrite: bool = False  # replace outputs (and their sidecar, frames) that exist; never an input
    meta: bool = False  # write <output>.json beside it: inputs with sha256, every option, versions, summary


@dataclass(frozen=True)
class TalkJob:
    """audio2video: a portrait speaks. Lips from the speech (audio2motion, or AniPortrait's audio2mesh with
    `motion=aniportrait`), blinks and head motion seeded by `seed` (or head motion from `talk.template`)."""

    seed: int = 0
    fps: float = 25.0  # frame rate of the generated motion and the video
    model: str | None = None  # audio2motion: a registry name or a folder; None: the shipped model
    motion: MotionSource = MotionSource.a2p
    portrait: PortraitOptions = field(default_factory=PortraitOptions)
    talk: TalkOptions = field(default_factory=TalkOptions)
    render: RenderOptions = field(default_factory=RenderOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    output: OutputOptions = field(default_factory=OutputOptions)

    def __post_init__(self):
        check_values(self)


@dataclass(frozen=True)
class DriveJob:
    """vid2vid and pose2vid: a portrait follows a driving motion (a video, a .pose, an AniPortrait template),
    relative to the motion's `retarget.ref_frame`. The embedded renderer draws no random numbers; `seed` seeds
    the diffusion renderer (AniPortrait's own default, 42)."""

    seed: int = DiffusionOptions.seed
    fps: float | None = None  # output frame rate; None: the motion's
    portrait: PortraitOptions = field(default_factory=PortraitOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    render: RenderOptions = field(default_factory=RenderOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    output: OutputOptions = field(default_factory=OutputOptions)

    def __post_init__(self):
        check_values(self)


@dataclass(frozen=True)
class ExtractJob:
    """extract-pose: landmarks and head pose of every frame of a video (or of an image) -> a .pose file."""

    extract: ExtractOptions = field(default_factory=ExtractOptions)
    output: OutputOptions = field(default_factory=OutputOptions)

    def __post_init__(self):
        check_values(self)


def resolved(job):
    """The job with its seed (and the portrait's size, the diffusion renderer's output size) written into the
    stage options that use them: what a run works from, and what its sidecar records."""
    diffusion = replace(job.render.diffusion, seed=job.seed, size=job.portrait.size)
    job = replace(job, render=replace(job.render, diffusion=diffusion))
    if isinstance(job, TalkJob):
        job = replace(job, talk=replace(job.talk, seed=job.seed))
    return job


# --- checks, before anything loads --------------------------------------------------------------------


def check_values(job) -> None:
    """Every number of `job` (a TalkJob, DriveJob or ExtractJob) in its range (a2pcli.limits), and the framing
    options that go together: InputError naming the flag, the rule and the value. Runs when a job is made."""
    if isinstance(job, ExtractJob):
        check_extract_options(job.extract)
        return
    limits.SEED.check("--seed", job.seed)
    limits.FPS.check("--fps", job.fps, optional=isinstance(job, DriveJob))
    moves = job.talk if isinstance(job, TalkJob) else job.retarget
    limits.MOTION_SCALE.check("--pose-scale", moves.pose_scale)
    limits.MOTION_SCALE.check("--expression-scale", moves.expression_scale)
    if isinstance(job, TalkJob):
        limits.BLINK_RATE.check("--blink-rate", job.talk.blink_rate)
    else:
        limits.REF_FRAME.check("--ref-frame", job.retarget.ref_frame)
    check_portrait_options(job.portrait, job.render.renderer)
    check_render_values(job.render)
    CRF.check("--crf", job.video.crf)


def check_portrait_options(portrait: PortraitOptions, renderer: RendererName) -> None:
    """--size, --max-size and --face-index. Without --crop the embedded renderer keeps the portrait's own framing
    (its longest side capped by --max-size), so a --size there would be ignored: it is refused instead."""
    limits.SIDE.check("--size", portrait.size)
    limits.SIDE.check("--max-size", portrait.max_size)
    limits.FACE_INDEX.check("--face-index", portrait.face_index, optional=True)
    if not portrait.crop and portrait.size != PortraitOptions.size and renderer != RendererName.aniportrait:
        raise InputError(f"{portrait.size} is the side of the --crop square, but there is no --crop: the video would "
                         "keep the portrait's framing", subject="--size",
                         remedy=f"add --crop, or use --max-size {portrait.size} to cap the video's longest side")


def check_batch_size(value) -> None:
    """--batch-size: auto, or a whole number of frames (a number or its digits)."""
    if value == "auto":
        return
    number = int(value) if isinstance(value, str) and value.isdigit() else value
    if not limits.BATCH_SIZE.accepts(number):
        raise InputError(f"must be auto or {limits.BATCH_SIZE.describe()}, got {limits.shown(value)}",
                         subject="--batch-size")


def check_render_values(render: RenderOptions) -> None:
    """The renderer's numbers, the diffusion renderer's too (whichever renderer is chosen)."""
    check_batch_size(render.batch_size)
    limits.STEPS.check("--steps", render.diffusion.steps)
    limits.CFG.check("--cfg", render.diffusion.cfg)
    limits.ACC.check("--acc", render.diffusion.acc)


def check_render(render: RenderOptions, size: int) -> None:
    """The renderer's options: each renderer's own are refused with the other one."""
    from a2pcli.aniportrait.config import SCHEDULERS
    from a2pcli.aniportrait.split import SPLIT_MODES

    d = render.diffusion
    if render.renderer != RendererName.aniportrait:
        for flag, used in (("--acc", d.acc != DiffusionOptions.acc), ("--compile", d.compile),
                           ("--split", d.split != DiffusionOptions.split)):
            if used:
                raise InputError("is an option of the diffusion renderer", subject=flag,
                                 remedy="add --renderer aniportrait, or leave it out")
        check_model_name(render.mouth_model, "--mouth-model")
        return
    if render.mouth_model is not None:
        raise InputError("is an option of the embedded renderer", subject=f"--mouth-model {render.mouth_model}",
                         remedy="leave it out with --renderer aniportrait")
    if d.scheduler not in SCHEDULERS:
        raise InputError(f"unknown --scheduler {d.scheduler!r}", subject="--scheduler",
                         remedy=f"use {', '.join(SCHEDULERS[:-1])} or {SCHEDULERS[-1]}")
    if d.split not in SPLIT_MODES:
        raise InputError(f"unknown --split {d.split!r}", subject="--split",
                         remedy=f"use {', '.join(SPLIT_MODES[:-1])} or {SPLIT_MODES[-1]}")
    if d.dtype not in DTYPE_CHOICES:
        raise InputError(f"unknown --dtype {d.dtype!r}", subject="--dtype",
                         remedy=f"use {', '.join(DTYPE_CHOICES[:-1])} or {DTYPE_CHOICES[-1]}")
    if size % DIFFUSION_SIZE_STEP:
        raise InputError(f"--size {size} must be a multiple of {DIFFUSION_SIZE_STEP} with the aniportrait renderer",
                         subject="--size", remedy="use 512 (AniPortrait's size), 384 or 768")
    if d.weights is not None and not Path(d.weights).is_dir():
        raise InputError("not a folder", subject=f"--weights {d.weights}",
                         remedy="give AniPortrait's pretrained_model folder, or leave --weights out to use the model "
                         "from `a2p models pull aniportrait`")


def check_model_name(name_or_path: str | None, flag: str = "--model") -> None:
    """A --model (or --mouth-model) value must be a registry name or an existing path (no hashing here: that is the
    run's job)."""
    if name_or_path is None:
        return
    from a2pcli.registry import load_registry

    if name_or_path not in load_registry() and not Path(name_or_path).expanduser().exists():
        raise ModelError("neither a known model name nor an existing path", subject=f"{flag} {name_or_path}",
                         remedy="see `a2p models list`")


def check_input_file(path: Path, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """An input file must exist (and have one of `suffixes`, when given)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", subject=str(path), remedy="check the path")
    if not path.is_file():
        raise InputError(f"{what} is not a file", subject=str(path))
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} must be a {' or '.join(suffixes)} file", subject=str(path))


def check_talk_job(job: TalkJob) -> None:
    check_render(job.render, job.portrait.size)
    template = job.talk.template
    if template is not None:
        check_input_file(template, "head-pose file", POSE_SUFFIXES)
        if job.talk.still:
            raise InputError("--still and --pose contradict each other", subject=f"--pose {template}",
                             remedy="pass one of them")
    if job.talk.template_region not in {r.value for r in TemplateRegion}:
        raise InputError(f"unknown --template-region {job.talk.template_region!r}", subject="--template-region",
                         remedy=f"use one of {', '.join(r.value for r in TemplateRegion)}")
    if job.motion == MotionSource.aniportrait and job.render.renderer != RendererName.aniportrait:
        raise InputError("AniPortrait's audio2mesh/audio2pose landmarks need the diffusion renderer",
                         subject="--motion aniportrait", remedy="add --renderer aniportrait, or use --motion a2p")
    check_model_name(job.model)
    check_head(job.talk.head)


def check_head(head: str) -> None:
    """--head: audio2pose (the shipped model), rule, or a model folder written by `a2p train audio2pose` (its
    files are read and verified when the run loads it: a corrupt one is a ModelError then)."""
    from a2pcli.audio2pose import CONFIG_FILE, WEIGHTS_FILE
    from a2pcli.talk import HEAD_MODEL, HEAD_RULE

    if head in (HEAD_MODEL, HEAD_RULE):
        return
    remedy = f"use {HEAD_MODEL} (the shipped model), {HEAD_RULE}, or a folder written by `a2p train audio2pose`"
    if not isinstance(head, str) or not head:
        raise InputError(f"must be a model folder, {HEAD_MODEL} or {HEAD_RULE}, got {limits.shown(head)}",
                         subject="--head", remedy=remedy)
    folder = Path(head).expanduser()
    if not folder.is_dir():
        raise InputError("not found" if not folder.exists() else "is not a folder", subject=f"--head {head}",
                         remedy=remedy)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"is not an audio2pose model folder (no {' or '.join(missing)})", subject=f"--head {head}",
                         remedy=remedy)


def check_drive_job(job: DriveJob) -> None:
    check_render(job.render, job.portrait.size)
    if job.retarget.region not in REGIONS:
        raise InputError(f"unknown --region {job.retarget.region!r}", subject="--region",
                         remedy=f"use one of {', '.join(REGIONS)}")


def check_extract_job(job: ExtractJob) -> None:
    check_values(job)
