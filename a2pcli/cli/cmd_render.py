"""`a2p audio2video`, `a2p vid2vid`, `a2p pose2vid`: flags -> a job's options -> one library call.

The work is a2pcli.pipeline's (talking: audio2video; reenact: vid2vid and pose2vid). Every default comes from
the options objects (a2pcli.pipeline.options and the stage options they compose). `talk_job` and `drive_job`
map the commands' parameters onto them; `a2p batch` maps manifest lines through the same two.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from a2pcli import __version__, limits
from a2pcli.aniportrait.render import DiffusionOptions
from a2pcli.aniportrait.split import SplitMode
from a2pcli.cli.options import Device, JsonOut, Model, OutputPath, Overwrite, Progress, ProgressMode, Quiet, Seed, span
from a2pcli.errors import InputError, NotAvailableError
from a2pcli.pipeline.options import (
    DriveJob,
    DrivenRegion,
    MotionSource,
    OutputOptions,
    RendererName,
    RenderOptions,
    TalkJob,
    TemplateRegion,
    VideoOptions,
)
from a2pcli.pipeline.portrait import PortraitOptions
from a2pcli.retarget import RetargetOptions
from a2pcli.talk import TalkOptions

WORKING_COMMANDS = "extract-pose, vid2vid, pose2vid (embedded renderer), doctor, models"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def not_available(command: str, work: str) -> NotAvailableError:
    """The error of a command whose work arrives in a later version (exit 5)."""
    return NotAvailableError(
        f"{work} is not available yet in a2p {__version__}",
        subject=f"a2p {command}",
        remedy=f"see `a2p --help` for what works now: {WORKING_COMMANDS}",
    )


# Options shared by the render commands (the ones shared by every command are in options.py). Their values are
# checked when the job is made (pipeline.options.check_values), so a manifest line and the API get the same checks.
PoseScale = Annotated[
    float, typer.Option("--pose-scale", help="Scale of head motion: 0 keeps the head still, 1 as driven, "
                        f"{span(limits.MOTION_SCALE)}.")
]
ExpressionScale = Annotated[
    float, typer.Option("--expression-scale", help="Scale of expression and lip motion; 1 as driven, "
                        f"{span(limits.MOTION_SCALE)}.")
]
Crop = Annotated[
    bool, typer.Option("--crop", help="Render a square crop around the face instead of the whole portrait.")
]
Size = Annotated[int, typer.Option("--size", help=f"Side of the square output with --crop, px, {span(limits.SIDE)} "
                                   "(and the longer side of the aniportrait renderer's output, with or without "
                                   "--crop).")]
MaxSize = Annotated[
    int, typer.Option("--max-size", help="Without --crop: longest side of the output, px; larger portraits shrink "
                      f"({span(limits.SIDE)}).")
]
Fps = Annotated[float, typer.Option("--fps", help=f"Frame rate of the output video, {span(limits.FPS)}.")]
Crf = Annotated[
    int, typer.Option("--crf", help="x264 quality: 0 lossless .. 51 worst; 18 looks lossless.")
]
FramesDir = Annotated[
    Optional[Path], typer.Option("--frames-dir", help="Also write every frame as a PNG into this folder (a folder per "
                                 "video in it when there are several).")
]
Meta = Annotated[
    bool,
    typer.Option("--meta", help="Write <output>.json beside the video: every option, the seed, inputs' hashes, "
                 "timings."),
]
RendererOpt = Annotated[
    RendererName,
    typer.Option(
        "--renderer",
        help="embedded: the built-in renderer (CPU or GPU); aniportrait: AniPortrait's diffusion renderer "
        "(its weights via `a2p models`, a GPU recommended).",
    ),
]
MouthModelOpt = Annotated[
    Optional[str],
    typer.Option("--mouth-model", help="The embedded renderer's mouth model: a registry name or a folder from "
                 "`a2p train mouth` (default: the shipped one)."),
]
Steps = Annotated[
    int, typer.Option("--steps", help=f"Denoising steps of the aniportrait renderer, {span(limits.STEPS)}.")
]
Cfg = Annotated[
    float, typer.Option("--cfg", help="Classifier-free guidance scale of the aniportrait renderer, "
                        f"{span(limits.CFG)}.")
]
LowVram = Annotated[
    bool, typer.Option("--low-vram", help="aniportrait renderer: at most 8 GB of GPU memory at 512x512 (slower: the "
                       "guidance halves run one after the other, models off the GPU when idle).")
]
Weights = Annotated[
    Optional[Path],
    typer.Option("--weights", help="aniportrait renderer: an AniPortrait pretrained_model folder to use in place "
                 "(default: the model from `a2p models pull aniportrait` or `a2p models import`)."),
]
SchedulerOpt = Annotated[
    str, typer.Option("--scheduler", help="aniportrait renderer: ddim (AniPortrait's), or dpmpp / unipc for fewer --steps "
                      "(not the same numbers as ddim).")
]
Clean = Annotated[
    bool, typer.Option("--clean", help="aniportrait renderer: the clean alternatives to AniPortrait's quirks: windows "
                       "that do not wrap round to the first frames, pose images in [-1, 1] as in training, overlapping "
                       "windows averaged without guidance too (default: AniPortrait's own numbers).")
]
Acc = Annotated[
    int, typer.Option("--acc", help="aniportrait renderer: diffuse every N-th frame only and fill the frames "
                      "between by optical-flow interpolation (about N times faster; 1: every frame; "
                      f"{span(limits.ACC)}).")
]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="aniportrait renderer on a GPU: torch.compile the denoiser (the first "
                       "render on a machine spends a minute or two compiling and keeps the kernels in the a2p "
                       "cache; `a2p doctor` says whether it is warm).")
]
SplitOpt = Annotated[
    SplitMode, typer.Option("--split", help="aniportrait renderer, one clip under torchrun with several processes: "
                            "what each process takes of every denoising step: windows (a share of the context "
                            "windows), cfg (one guidance half: an even number of processes) or auto.")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="aniportrait renderer: auto (fp16 on a GPU, fp32 on the CPU), fp16, bf16 or fp32.")
]
BatchSize = Annotated[
    str, typer.Option("--batch-size", help=f"Frames rendered at once: {span(limits.BATCH_SIZE)}, or auto (as many as "
                      "fit in memory).")
]
FaceIndex = Annotated[
    Optional[int],
    typer.Option("--face-index", help="Which face to animate when the portrait shows several, largest first "
                 "(default: the largest, with a warning)."),
]
RegionOpt = Annotated[
    DrivenRegion,
    typer.Option("--region", help="What the driving motion controls: all, pose (head only), expression, lips, eyes."),
]
RefFrame = Annotated[
    int,
    typer.Option("--ref-frame", help="Driving frame that matches the portrait (from 0); motion is taken relative to "
                 "it."),
]
Portrait = Annotated[Path, typer.Argument(help="Portrait image (one face, roughly frontal).", show_default=False)]


# --- flags -> options -------------------------------------------------------------------------------------


def render_options(*, renderer, device, batch_size, mouth_model, steps, cfg, low_vram, weights, dtype, scheduler,
                   clean, acc, compile_, split=SplitMode(DiffusionOptions.split)) -> RenderOptions:
    diffusion = DiffusionOptions(steps=steps, cfg=cfg, dtype=dtype, low_vram=low_vram, scheduler=scheduler,
                                 compat=not clean, acc=acc, compile=compile_, split=SplitMode(split).value,
                                 weights=str(weights) if weights is not None else None)
    return RenderOptions(renderer=RendererName(renderer), device=device, batch_size=batch_size, mouth_model=mouth_model,
                         diffusion=diffusion)


def talk_job(*, seed, fps, model, motion, pose, template_region, still, pose_scale, expression_scale, blink_rate,
             crop, size, max_size, crf, frames_dir, meta, overwrite, head=TalkOptions.head, **render) -> TalkJob:
    """audio2video's parameters (as click parses them) -> its job."""
    render = {k: v for k, v in render.items() if k not in ("inputs", "output", "progress", "quiet", "json_out")}
    talk = TalkOptions(template=pose, template_region=TemplateRegion(template_region).value, still=still,
                       pose_scale=pose_scale, expression_scale=expression_scale, blink_rate=blink_rate, head=head)
    return TalkJob(seed=seed, fps=float(fps), model=model, motion=MotionSource(motion),
                   portrait=PortraitOptions(crop=crop, size=size, max_size=max_size), talk=talk,
                   render=render_options(**render), video=VideoOptions(crf=crf, frames_dir=frames_dir),
                   output=OutputOptions(overwrite=overwrite, meta=meta))


def drive_job(*, seed, region, ref_frame, pose_scale, expression_scale, face_index, crop, size, max_size, crf,
              frames_dir, meta, overwrite, fps=None, **render) -> DriveJob:
    """vid2vid's and pose2vid's parameters (as click parses them) -> their job."""
    render = {k: v for k, v in render.items()
              if k not in ("portrait", "driving", "motion", "audio", "output", "progress", "quiet", "json_out")}
    retarget = RetargetOptions(region=DrivenRegion(region).value, pose_scale=pose_scale,
                               expression_scale=expression_scale, ref_frame=ref_frame)
    portrait = PortraitOptions(crop=crop, size=size, max_size=max_size, face_index=face_index)
    return DriveJob(seed=seed, fps=fps, portrait=portrait, retarget=retarget, render=render_options(**render),
                    video=VideoOptions(crf=crf, frames_dir=frames_dir),
                    output=OutputOptions(overwrite=overwrite, meta=meta))


def params() -> dict:
    """The running command's parameters, as click parsed them."""
    return dict(click.get_current_context().params)


# --- the commands ---------------------------------------------------------------------------------------------


def _looks_like_image(path: Path) -> bool:
    from a2pcli.media import is_image

    return path.suffix.lower() in IMAGE_SUFFIXES or (path.is_file() and is_image(path))


def split_talk_inputs(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """audio2video's positional arguments -> (portraits, audio files): the images first, then the speech."""
    example = "e.g. a2p audio2video face.jpg speech.wav, or a2p audio2video a.png b.png one.wav two.wav -o outdir/"
    if len(inputs) < 2:
        raise InputError("expected one or more portraits, then one or more audio files", subject="a2p audio2video",
                         remedy=example)
    i = 1
    while i < len(inputs) - 1 and _looks_like_image(inputs[i]):
        i += 1
    portraits, audios = list(inputs[:i]), list(inputs[i:])
    for audio in audios:
        if _looks_like_image(audio):
            raise InputError("is an image where speech was expected: the portraits come first, then the audio files",
                             subject=str(audio), remedy=example)
    return portraits, audios


def describe_video(r: dict) -> str:
    """One line for a finished video (its --json result)."""
    notes = "".join(f"\n  note: {n}" for n in r["notes"])
    return (f"{r['output']}: {r['frames']} frames at {r['fps']:g} fps ({r['duration_s']:g} s), "
            f"{r['size'][0]}x{r['size'][1]}, {r['device']}; {r['elapsed_s']:.1f} s "
            f"({r['frames_per_s']:g} frames/s){notes}")


def audio2video(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="One or more portrait images, then one or more speech files (wav, mp3, flac, m4a...).",
                       show_default=False, metavar="PORTRAITS... AUDIO..."),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Output video, or an existing directory for several portraits "
                     "(default: <portrait>_<audio>.mp4 beside the portrait)."),
    ] = None,
    pose: Annotated[
        Optional[Path],
        typer.Option("--pose", help="Take head motion from a .pose file (`a2p extract-pose`) or an AniPortrait .npy "
                     "head-pose template instead of generating it; looped or cut to the audio's length."),
    ] = TalkOptions.template,
    template_region: Annotated[
        TemplateRegion, typer.Option("--template-region", help="What --pose drives: pose, pose+eyes, pose+eyes+brows.")
    ] = TemplateRegion(TalkOptions.template_region),
    still: Annotated[
        bool, typer.Option("--still", help="No head motion: only lips, blinks and expression move.")
    ] = TalkOptions.still,
    head: Annotated[
        str, typer.Option("--head", help="Head motion from the speech: audio2pose (the shipped model; --seed picks "
                          "one of its motions), a folder written by `a2p train audio2pose`, or rule (a smaller "
                          "hand-made motion from the loudness, no model). --pose and --still replace it.")
    ] = TalkOptions.head,
    pose_scale: PoseScale = TalkOptions.pose_scale,
    expression_scale: ExpressionScale = TalkOptions.expression_scale,
    blink_rate: Annotated[
        float, typer.Option("--blink-rate", help=f"Blinks per minute, {span(limits.BLINK_RATE)} (0: none).")
    ] = TalkOptions.blink_rate,
    seed: Seed = TalkJob.seed,
    model: Model = TalkJob.model,
    renderer: RendererOpt = RenderOptions.renderer,
    mouth_model: MouthModelOpt = RenderOptions.mouth_model,
    motion: Annotated[
        MotionSource,
        typer.Option("--motion", help="Speech-to-motion: a2p (the shipped audio2motion model, see --model) or "
                     "aniportrait (AniPortrait's audio2mesh and audio2pose, from the --weights folder; needs "
                     "--renderer aniportrait)."),
    ] = TalkJob.motion,
    steps: Steps = DiffusionOptions.steps,
    cfg: Cfg = DiffusionOptions.cfg,
    low_vram: LowVram = DiffusionOptions.low_vram,
    weights: Weights = DiffusionOptions.weights,
    dtype: DtypeOpt = DiffusionOptions.dtype,
    scheduler: SchedulerOpt = DiffusionOptions.scheduler,
    clean: Clean = not DiffusionOptions.compat,
    acc: Acc = DiffusionOptions.acc,
    compile_: CompileOpt = DiffusionOptions.compile,
    split: SplitOpt = SplitMode(DiffusionOptions.split),
    size: Size = PortraitOptions.size,
    max_size: MaxSize = PortraitOptions.max_size,
    crop: Crop = PortraitOptions.crop,
    fps: Fps = TalkJob.fps,
    crf: Crf = VideoOptions.crf,
    frames_dir: FramesDir = VideoOptions.frames_dir,
    meta: Meta = OutputOptions.meta,
    batch_size: BatchSize = RenderOptions.batch_size,
    device: Device = RenderOptions.device,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
    overwrite: Overwrite = OutputOptions.overwrite,
) -> None:
    """Portrait(s) + speech -> talking-head video.

    Lip sync, blinks, expression and head motion, all generated from the speech (or head motion from --pose).
    Head motion comes from the shipped audio2pose model: --seed picks one of the motions it finds for the speech.

    PORTRAITS: one or more images (one face each); AUDIO: one or more speech files (wav, mp3, flac, m4a...).
    Every portrait speaks every audio file, one video each, in one process (models loaded once). The
    --model default is the shipped audio2motion model. Under torchrun (torchrun --nproc-per-node N -m a2pcli
    audio2video ... -o outdir/) the pairs are shared out over the processes, one GPU each, as `a2p batch`
    shares a manifest: pairs already made (video and sidecar) are skipped. One pair under torchrun is one clip:
    with --renderer aniportrait every process renders it together (see --split); the embedded renderer refuses.

    Example: a2p audio2video face.jpg speech.wav -o talk.mp4
    """
    from a2pcli.cli.app import finish_run, session
    from a2pcli.launch import launch_from_env
    from a2pcli.pipeline.talking import audio2video_pairs
    from a2pcli.progress import Reporter

    if launch_from_env().distributed:
        if len(inputs) != 2:  # several pairs: shared out; one pair is one clip, rendered together
            _audio2video_shared(inputs, output, progress, quiet, json_out)
            return
        _one_clip_together("audio2video", lambda: (talk_job(**params()), split_talk_inputs(inputs)),
                           lambda models, reporter, job, pair: audio2video_pairs(*pair, output, job, reporter=reporter,
                                                                                 models=models),
                           progress, quiet, json_out)
        return
    portraits, audios = split_talk_inputs(inputs)
    job = talk_job(**params())
    with session("audio2video", progress, quiet, describe_video) as sink:
        run = audio2video_pairs(portraits, audios, output, job, reporter=Reporter(sink))
    finish_run(sink, run, json_out)


def _audio2video_shared(inputs: list[Path], output: Path | None, progress: ProgressMode, quiet: bool,
                        json_out: bool) -> None:
    """audio2video under torchrun: its pairs shared out over the processes as `a2p batch` shares a manifest's
    jobs (each output with its sidecar, pairs already made skipped; records as `a2p batch` prints them)."""
    from a2pcli.cli.cmd_batch import rank_errors, run_jobs
    from a2pcli.launch import launch_from_env
    from a2pcli.pipeline.manifest import talk_jobs
    from a2pcli.pipeline.shards import Shard

    launch = launch_from_env()
    with rank_errors(launch):
        portraits, audios = split_talk_inputs(inputs)
        job = talk_job(**params())
        entries = talk_jobs(portraits, audios, output, job)
    run_jobs("audio2video", entries, None, Shard(launch), job.output.overwrite, progress, quiet, json_out)


def vid2vid(
    portrait: Portrait,
    driving: Annotated[
        Path, typer.Argument(help="Driving video, or its .pose from `a2p extract-pose`.", show_default=False)
    ],
    output: OutputPath = None,
    region: RegionOpt = DrivenRegion(RetargetOptions.region),
    ref_frame: RefFrame = RetargetOptions.ref_frame,
    pose_scale: PoseScale = RetargetOptions.pose_scale,
    expression_scale: ExpressionScale = RetargetOptions.expression_scale,
    face_index: FaceIndex = PortraitOptions.face_index,
    crop: Crop = PortraitOptions.crop,
    size: Size = PortraitOptions.size,
    max_size: MaxSize = PortraitOptions.max_size,
    crf: Crf = VideoOptions.crf,
    frames_dir: FramesDir = VideoOptions.frames_dir,
    meta: Meta = OutputOptions.meta,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the aniportrait renderer's noise (the embedded "
                                      "renderer draws no random numbers).")] = DriveJob.seed,
    renderer: RendererOpt = RenderOptions.renderer,
    mouth_model: MouthModelOpt = RenderOptions.mouth_model,
    steps: Steps = DiffusionOptions.steps,
    cfg: Cfg = DiffusionOptions.cfg,
    low_vram: LowVram = DiffusionOptions.low_vram,
    weights: Weights = DiffusionOptions.weights,
    dtype: DtypeOpt = DiffusionOptions.dtype,
    scheduler: SchedulerOpt = DiffusionOptions.scheduler,
    clean: Clean = not DiffusionOptions.compat,
    acc: Acc = DiffusionOptions.acc,
    compile_: CompileOpt = DiffusionOptions.compile,
    split: SplitOpt = SplitMode(DiffusionOptions.split),
    batch_size: BatchSize = RenderOptions.batch_size,
    device: Device = RenderOptions.device,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
    overwrite: Overwrite = OutputOptions.overwrite,
) -> None:
    """Portrait + driving video -> the portrait moving like it.

    Head, expression, lips and eyes follow the driving video (choose which with --region).

    PORTRAIT: an image; DRIVING: a video, or its .pose from `a2p extract-pose` (extract once, reuse it).
    Writes <portrait>_<driving>.mp4 beside the portrait unless -o says otherwise.

    Example: a2p vid2vid face.jpg actor.mp4 -o out.mp4
    """
    _drive("vid2vid", portrait, driving, output, None, progress, quiet, json_out)


def pose2vid(
    portrait: Portrait,
    motion: Annotated[
        Path,
        typer.Argument(help="Motion: a .pose file (`a2p extract-pose`) or an AniPortrait .npy head-pose template.",
                       show_default=False),
    ],
    output: OutputPath = None,
    audio: Annotated[
        Optional[Path], typer.Option("--audio", help="Speech to put in the video (it does not drive the motion).")
    ] = None,
    fps: Annotated[
        Optional[float], typer.Option("--fps", help=f"Output frame rate, {span(limits.FPS)} (default: the motion "
                                      "file's).")
    ] = DriveJob.fps,
    region: RegionOpt = DrivenRegion(RetargetOptions.region),
    ref_frame: RefFrame = RetargetOptions.ref_frame,
    pose_scale: PoseScale = RetargetOptions.pose_scale,
    expression_scale: ExpressionScale = RetargetOptions.expression_scale,
    face_index: FaceIndex = PortraitOptions.face_index,
    crop: Crop = PortraitOptions.crop,
    size: Size = PortraitOptions.size,
    max_size: MaxSize = PortraitOptions.max_size,
    crf: Crf = VideoOptions.crf,
    frames_dir: FramesDir = VideoOptions.frames_dir,
    meta: Meta = OutputOptions.meta,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the aniportrait renderer's noise (the embedded "
                                      "renderer draws no random numbers).")] = DriveJob.seed,
    renderer: RendererOpt = RenderOptions.renderer,
    mouth_model: MouthModelOpt = RenderOptions.mouth_model,
    steps: Steps = DiffusionOptions.steps,
    cfg: Cfg = DiffusionOptions.cfg,
    low_vram: LowVram = DiffusionOptions.low_vram,
    weights: Weights = DiffusionOptions.weights,
    dtype: DtypeOpt = DiffusionOptions.dtype,
    scheduler: SchedulerOpt = DiffusionOptions.scheduler,
    clean: Clean = not DiffusionOptions.compat,
    acc: Acc = DiffusionOptions.acc,
    compile_: CompileOpt = DiffusionOptions.compile,
    split: SplitOpt = SplitMode(DiffusionOptions.split),
    batch_size: BatchSize = RenderOptions.batch_size,
    device: Device = RenderOptions.device,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
    overwrite: Overwrite = OutputOptions.overwrite,
) -> None:
    """Portrait + saved motion (.pose or .npy) -> video.

    Replays a .pose file or an AniPortrait head-pose template on the portrait.

    PORTRAIT: an image; MOTION: a .pose file (`a2p extract-pose`) or an AniPortrait .npy head-pose template.
    Writes <portrait>_<motion>.mp4 beside the portrait unless -o says otherwise.

    Example: a2p pose2vid face.jpg actor.pose --audio speech.wav -o out.mp4
    """
    _drive("pose2vid", portrait, motion, output, audio, progress, quiet, json_out)


def _drive(command: str, portrait: Path, driver: Path, output: Path | None, audio: Path | None,
           progress: ProgressMode, quiet: bool, json_out: bool) -> None:
    from a2pcli.cli.app import finish_run, session
    from a2pcli.launch import launch_from_env
    from a2pcli.pipeline.reenact import reenact_one
    from a2pcli.progress import Reporter

    if launch_from_env().distributed:
        _one_clip_together(command, lambda: (drive_job(**params()), None),
                           lambda models, reporter, job, _: reenact_one(command, portrait, driver, output, job,
                                                                        audio=audio, reporter=reporter, models=models),
                           progress, quiet, json_out)
        return
    job = drive_job(**params())
    with session(command, progress, quiet, describe_video) as sink:
        run = reenact_one(command, portrait, driver, output, job, audio=audio, reporter=Reporter(sink))
    finish_run(sink, run, json_out)


def _one_clip_together(command: str, parse, run, progress: ProgressMode, quiet: bool, json_out: bool) -> None:
    """One clip under torchrun: every process renders it together (a2pcli.aniportrait.split). `parse()` -> (the
    command's job, its parsed inputs); rank 0 runs the command as one process would (`run(models, reporter, job,
    inputs)`: inputs, models, the video and its sidecar); the others load the models on their own GPU, take their
    share of every denoising step and write nothing."""
    from a2pcli.aniportrait.split import check_split, join_clip_group, serve_clips
    from a2pcli.cli.app import finish_run, session
    from a2pcli.cli.cmd_batch import rank_errors
    from a2pcli.launch import launch_from_env
    from a2pcli.pipeline.models import Models
    from a2pcli.progress import Reporter

    launch = launch_from_env()
    with rank_errors(launch), _rank_0_first(launch):
        job, inputs = parse()
        render = job.render
        if render.renderer != RendererName.aniportrait:
            raise InputError("under torchrun one clip is rendered by every process together, which only the "
                             "diffusion renderer does", subject=f"a2p {command} --renderer {render.renderer.value}",
                             remedy="add --renderer aniportrait, or start it without torchrun (several clips: "
                             "a2p batch under torchrun shares them out)")
        check_split(render.diffusion.split, launch.world_size, render.diffusion.cfg)
        group = join_clip_group(launch, render.device)
    if not launch.is_main:
        with _rank_failures(launch):
            serve_clips(group, render.diffusion, render.device)
        return
    try:
        with session(command, progress, quiet, describe_video) as sink:
            result = run(Models(clip_group=group), Reporter(sink), job, inputs)
    finally:
        group.close()
    finish_run(sink, result, json_out)


@contextlib.contextmanager
def _rank_0_first(launch):
    """A failure that every process meets alike (bad input): the others leave a moment after rank 0, so that
    torchrun, which stops the rest as soon as one fails, lets rank 0 say why."""
    from a2pcli.errors import A2PError
    from a2pcli.pipeline.shards import FAILED_EXIT_GRACE_S

    try:
        yield
    except A2PError:
        if not launch.is_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by torchrun meanwhile: silently
            time.sleep(FAILED_EXIT_GRACE_S)
        raise


@contextlib.contextmanager
def _rank_failures(launch):
    """A process other than rank 0 that fails while it renders its share says so with its rank."""
    from a2pcli.errors import EXIT_FAILED, A2PError

    try:
        yield
    except A2PError as exc:
        sys.stderr.write(f"error: rank {launch.rank}: {exc.one_line()}\n")
        raise typer.Exit(exc.exit_code) from None
    except RuntimeError as exc:  # torch.distributed's: rank 0 stopped in the middle of a clip
        if type(exc).__module__.split(".")[0] != "torch":
            raise
        sys.stderr.write(f"error: rank {launch.rank}: the processes lost each other in the middle of a clip "
                         f"({' '.join(str(exc).split())[:200]})\n")
        raise typer.Exit(EXIT_FAILED) from None


def register(app: typer.Typer) -> None:
    app.command("audio2video")(audio2video)
    app.command("vid2vid")(vid2vid)
    app.command("pose2vid")(pose2vid)
