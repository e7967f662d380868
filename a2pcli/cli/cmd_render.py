"""`a2p audio2video`, `a2p vid2vid`, `a2p pose2vid`: the render commands.

Each renders with the embedded renderer or, with `--renderer aniportrait`, AniPortrait's diffusion renderer.
audio2video's motion comes from a2p's audio2motion model or, with `--motion aniportrait` (diffusion renderer
only), from AniPortrait's audio2mesh and audio2pose (a2pcli/aniportrait/motion.py).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli import __version__
from a2pcli.cli.options import Device, JsonOut, Model, OutputPath, Overwrite, Progress, ProgressMode, Quiet, Seed
from a2pcli.errors import InputError, ModelError, NotAvailableError

VIDEO_SUFFIX = ".mp4"
POSE_SUFFIXES = (".pose", ".npy")  # a2p's .pose (from extract-pose) or an AniPortrait head-pose template
WORKING_COMMANDS = "extract-pose, vid2vid, pose2vid (embedded renderer), doctor, models"
DEFAULT_FPS = 25.0  # frame rate of generated motion
DEFAULT_BLINKS_PER_MIN = 17.0  # typical adult spontaneous blink rate in conversation
DEFAULT_MAX_SIZE = 1024  # px, longest side of an uncropped output
DEFAULT_CROP_SIZE = 512  # px, AniPortrait's render resolution
DEFAULT_CRF = 18  # x264: visually lossless
DEFAULT_STEPS = 25
DEFAULT_CFG = 3.5
MAX_CRF = 51  # x264's worst quality


def not_available(command: str, work: str) -> NotAvailableError:
    """The error of a command whose work arrives in a later version (exit 5)."""
    return NotAvailableError(
        f"{work} is not available yet in a2p {__version__}",
        subject=f"a2p {command}",
        remedy=f"see `a2p --help` for what works now: {WORKING_COMMANDS}",
    )


class TemplateRegion(str, Enum):
    pose = "pose"
    pose_eyes = "pose+eyes"
    pose_eyes_brows = "pose+eyes+brows"


class Renderer(str, Enum):
    embedded = "embedded"
    aniportrait = "aniportrait"


class MotionModel(str, Enum):
    a2p = "a2p"
    aniportrait = "aniportrait"


class Region(str, Enum):
    all = "all"
    pose = "pose"
    expression = "expression"
    lips = "lips"
    eyes = "eyes"


# Options shared by the render commands (the ones shared by every command are in options.py).
PoseScale = Annotated[
    float, typer.Option("--pose-scale", min=0.0, help="Scale of head motion: 0 keeps the head still, 1 as driven.")
]
ExpressionScale = Annotated[
    float, typer.Option("--expression-scale", min=0.0, help="Scale of expression and lip motion; 1 as driven.")
]
Crop = Annotated[
    bool, typer.Option("--crop", help="Render a square crop around the face instead of the whole portrait.")
]
Size = Annotated[Optional[int], typer.Option("--size", min=64, help="Side of the square output with --crop, px.")]
MaxSize = Annotated[
    int, typer.Option("--max-size", min=64, help="Without --crop: longest side of the output; larger portraits shrink.")
]
Fps = Annotated[float, typer.Option("--fps", min=1.0, help="Frame rate of the output video.")]
Crf = Annotated[
    int, typer.Option("--crf", min=0, max=MAX_CRF, help="x264 quality: 0 lossless .. 51 worst; 18 looks lossless.")
]
FramesDir = Annotated[
    Optional[Path], typer.Option("--frames-dir", help="Also write every frame as a PNG into this folder.")
]
Meta = Annotated[
    bool,
    typer.Option("--meta", help="Write <output>.json beside the video: every option, the seed, model hashes, timings."),
]
RendererOpt = Annotated[
    Renderer,
    typer.Option(
        "--renderer",
        help="embedded: the built-in renderer (CPU or GPU); aniportrait: AniPortrait's diffusion renderer "
        "(its weights via `a2p models`, a GPU recommended).",
    ),
]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Denoising steps of the aniportrait renderer.")]
Cfg = Annotated[
    float, typer.Option("--cfg", min=0.0, help="Classifier-free guidance scale of the aniportrait renderer.")
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
    int, typer.Option("--acc", min=1, help="aniportrait renderer: diffuse every N-th frame only and fill the frames "
                      "between by optical-flow interpolation (about N times faster; 1: every frame).")
]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="aniportrait renderer on a GPU: torch.compile the denoiser (the first "
                       "render in a new environment spends a minute or two compiling; faster after that).")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="aniportrait renderer: auto (fp16 on a GPU, fp32 on the CPU), fp16, bf16 or fp32.")
]
BatchSize = Annotated[
    str, typer.Option("--batch-size", help="Frames rendered at once: a number, or auto (as many as fit in memory).")
]
FaceIndex = Annotated[
    Optional[int],
    typer.Option("--face-index", min=0, help="Which face to animate when the portrait shows several, largest first "
                 "(default: the largest, with a warning)."),
]
RegionOpt = Annotated[
    Region,
    typer.Option("--region", help="What the driving motion controls: all, pose (head only), expression, lips, eyes."),
]
RefFrame = Annotated[
    int,
    typer.Option("--ref-frame", min=0, help="Driving frame that matches the portrait; motion is taken relative to it."),
]
Portrait = Annotated[Path, typer.Argument(help="Portrait image (one face, roughly frontal).", show_default=False)]


def check_file(path: Path, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """An input file must exist (and have one of `suffixes`, when given)."""
    if not path.exists():
        raise InputError(f"{what} not found", subject=str(path), remedy="check the path")
    if not path.is_file():
        raise InputError(f"{what} is not a file", subject=str(path))
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} must be a {' or '.join(suffixes)} file", subject=str(path))


def check_batch_size(value: str) -> None:
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise InputError("must be a positive number or auto", subject=f"--batch-size {value}")


def check_model(name_or_path: str | None) -> None:
    """A --model value must be a registry name or an existing path (no hashing here: that is the run's job)."""
    if name_or_path is None:
        return
    from a2pcli.registry import load_registry

    if name_or_path not in load_registry() and not Path(name_or_path).expanduser().exists():
        raise ModelError("neither a known model name nor an existing path", subject=name_or_path,
                         remedy="see `a2p models list`")


def plan_pair_outputs(pairs: list[tuple[Path, Path]], output: Path | None, overwrite: bool) -> list[Path]:
    """One video per (portrait, driver) pair: `<portrait>_<driver>.mp4` beside the portrait, in an -o
    directory, or -o itself (one pair only). Two pairs that would write the same file are an error."""
    from a2pcli.outputs import check_output

    names = [f"{p.stem}_{d.stem}{VIDEO_SUFFIX}" for p, d in pairs]
    if output is None:
        outs = [p.with_name(n) for (p, _), n in zip(pairs, names)]
    elif output.is_dir():
        outs = [output / n for n in names]
    elif len(pairs) > 1:
        what = "portraits" if len({d for _, d in pairs}) == 1 else "portraits or audio files"
        raise InputError(f"with several {what}, -o must be an existing directory", subject=str(output))
    else:
        outs = [output]
    seen: dict[Path, tuple[Path, Path]] = {}
    for out, pair in zip(outs, pairs):
        if out in seen:
            first = seen[out]
            raise InputError(f"{first[0]} with {first[1]} and {pair[0]} with {pair[1]} would both write {out.name}",
                             subject=str(out), remedy="rename one of the inputs, or render them in separate runs")
        seen[out] = pair
        check_output(out, overwrite)
    return outs


def plan_outputs(portraits: list[Path], driver: Path, output: Path | None, overwrite: bool) -> list[Path]:
    """One video per portrait, all driven by `driver` (see plan_pair_outputs)."""
    return plan_pair_outputs([(p, driver) for p in portraits], output, overwrite)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


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


def check_driven(portrait: Path, driver: Path, driver_what: str, driver_suffixes: tuple[str, ...],
                 output: Path | None, overwrite: bool, batch_size: str, audio: Path | None = None) -> None:
    """Checks shared by vid2vid and pose2vid; they differ only in the driving signal."""
    check_file(portrait, "portrait")
    check_file(driver, driver_what, driver_suffixes)
    if audio is not None:
        check_file(audio, "audio")
    check_batch_size(batch_size)
    plan_outputs([portrait], driver, output, overwrite)


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
    ] = None,
    template_region: Annotated[
        TemplateRegion, typer.Option("--template-region", help="What --pose drives: pose, pose+eyes, pose+eyes+brows.")
    ] = TemplateRegion.pose,
    still: Annotated[
        bool, typer.Option("--still", help="No head motion: only lips, blinks and expression move.")
    ] = False,
    pose_scale: PoseScale = 1.0,
    expression_scale: ExpressionScale = 1.0,
    blink_rate: Annotated[
        float, typer.Option("--blink-rate", min=0.0, help="Blinks per minute.")
    ] = DEFAULT_BLINKS_PER_MIN,
    seed: Seed = 0,
    model: Model = None,
    renderer: RendererOpt = Renderer.embedded,
    motion: Annotated[
        MotionModel,
        typer.Option("--motion", help="Speech-to-motion: a2p (the shipped audio2motion model, see --model) or "
                     "aniportrait (AniPortrait's audio2mesh and audio2pose, from the --weights folder; needs "
                     "--renderer aniportrait)."),
    ] = MotionModel.a2p,
    steps: Steps = DEFAULT_STEPS,
    cfg: Cfg = DEFAULT_CFG,
    low_vram: LowVram = False,
    weights: Weights = None,
    dtype: DtypeOpt = "auto",
    scheduler: SchedulerOpt = "ddim",
    clean: Clean = False,
    acc: Acc = 1,
    compile_: CompileOpt = False,
    size: Size = None,
    max_size: MaxSize = DEFAULT_MAX_SIZE,
    crop: Crop = False,
    fps: Fps = DEFAULT_FPS,
    crf: Crf = DEFAULT_CRF,
    frames_dir: FramesDir = None,
    meta: Meta = False,
    batch_size: BatchSize = "auto",
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
    overwrite: Overwrite = False,
) -> None:
    """Portrait(s) + speech -> talking-head video.

    Lip sync, blinks, expression and head motion, all generated from the speech (or head motion from --pose).

    PORTRAITS: one or more images (one face each); AUDIO: one or more speech files (wav, mp3, flac, m4a...).
    Every portrait speaks every audio file, one video each, in one process (models loaded once). The
    --model default is the shipped audio2motion model.

    Example: a2p audio2video face.jpg speech.wav -o talk.mp4
    """
    portraits, audios = split_talk_inputs(inputs)
    for portrait in portraits:
        check_file(portrait, "portrait")
    for audio in audios:
        check_file(audio, "audio")
    if pose is not None:
        check_file(pose, "head-pose file", POSE_SUFFIXES)
        if still:
            raise InputError("--still and --pose contradict each other", subject=f"--pose {pose}",
                             remedy="pass one of them")
    check_batch_size(batch_size)
    check_model(model)
    plan_pair_outputs([(p, a) for a in audios for p in portraits], output, overwrite)
    check_renderer(locals())
    if motion is MotionModel.aniportrait and renderer is not Renderer.aniportrait:
        raise InputError("AniPortrait's audio2mesh/audio2pose landmarks need the diffusion renderer",
                         subject="--motion aniportrait", remedy="add --renderer aniportrait, or use --motion a2p")
    run_talk(locals(), portraits, audios)


def vid2vid(
    portrait: Portrait,
    driving: Annotated[
        Path, typer.Argument(help="Driving video, or its .pose from `a2p extract-pose`.", show_default=False)
    ],
    output: OutputPath = None,
    region: RegionOpt = Region.all,
    ref_frame: RefFrame = 0,
    pose_scale: PoseScale = 1.0,
    expression_scale: ExpressionScale = 1.0,
    face_index: FaceIndex = None,
    crop: Crop = False,
    size: Size = DEFAULT_CROP_SIZE,
    max_size: MaxSize = DEFAULT_MAX_SIZE,
    crf: Crf = DEFAULT_CRF,
    frames_dir: FramesDir = None,
    meta: Meta = False,
    renderer: RendererOpt = Renderer.embedded,
    steps: Steps = DEFAULT_STEPS,
    cfg: Cfg = DEFAULT_CFG,
    low_vram: LowVram = False,
    weights: Weights = None,
    dtype: DtypeOpt = "auto",
    scheduler: SchedulerOpt = "ddim",
    clean: Clean = False,
    acc: Acc = 1,
    compile_: CompileOpt = False,
    batch_size: BatchSize = "auto",
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
    overwrite: Overwrite = False,
) -> None:
    """Portrait + driving video -> the portrait moving like it.

    Head, expression, lips and eyes follow the driving video (choose which with --region).

    PORTRAIT: an image; DRIVING: a video, or its .pose from `a2p extract-pose` (extract once, reuse it).
    Writes <portrait>_<driving>.mp4 beside the portrait unless -o says otherwise.

    Example: a2p vid2vid face.jpg actor.mp4 -o out.mp4
    """
    check_driven(portrait, driving, "driving video", (), output, overwrite, batch_size)
    check_renderer(locals())
    run_driven("vid2vid", locals(), audio=None)


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
        Optional[float], typer.Option("--fps", min=1.0, help="Output frame rate (default: the motion file's).")
    ] = None,
    region: RegionOpt = Region.all,
    ref_frame: RefFrame = 0,
    pose_scale: PoseScale = 1.0,
    expression_scale: ExpressionScale = 1.0,
    face_index: FaceIndex = None,
    crop: Crop = False,
    size: Size = DEFAULT_CROP_SIZE,
    max_size: MaxSize = DEFAULT_MAX_SIZE,
    crf: Crf = DEFAULT_CRF,
    frames_dir: FramesDir = None,
    meta: Meta = False,
    renderer: RendererOpt = Renderer.embedded,
    steps: Steps = DEFAULT_STEPS,
    cfg: Cfg = DEFAULT_CFG,
    low_vram: LowVram = False,
    weights: Weights = None,
    dtype: DtypeOpt = "auto",
    scheduler: SchedulerOpt = "ddim",
    clean: Clean = False,
    acc: Acc = 1,
    compile_: CompileOpt = False,
    batch_size: BatchSize = "auto",
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
    overwrite: Overwrite = False,
) -> None:
    """Portrait + saved motion (.pose or .npy) -> video.

    Replays a .pose file or an AniPortrait head-pose template on the portrait.

    PORTRAIT: an image; MOTION: a .pose file (`a2p extract-pose`) or an AniPortrait .npy head-pose template.
    Writes <portrait>_<motion>.mp4 beside the portrait unless -o says otherwise.

    Example: a2p pose2vid face.jpg actor.pose --audio speech.wav -o out.mp4
    """
    check_driven(portrait, motion, "motion file", POSE_SUFFIXES, output, overwrite, batch_size, audio)
    check_renderer(locals())
    run_driven("pose2vid", {**locals(), "driving": motion}, audio=audio)


def _human(s: dict) -> str:
    notes = "".join(f"\n  note: {n}" for n in s["notes"])
    return (f"{s['output']}: {s['frames']} frames at {s['fps']:g} fps ({s['duration_s']:g} s), "
            f"{s['size'][0]}x{s['size'][1]}, {s['device']}; {s['elapsed_s']:.1f} s "
            f"({s['frames_per_s']:g} frames/s){notes}")


def check_renderer(args: dict) -> None:
    """The aniportrait renderer's options, checked before anything runs."""
    if args.get("renderer") is not Renderer.aniportrait:
        for flag, used in (("--acc", args.get("acc", 1) != 1), ("--compile", args.get("compile_", False))):
            if used:
                raise InputError("is an option of the diffusion renderer", subject=flag,
                                 remedy="add --renderer aniportrait, or leave it out")
        return
    if args.get("scheduler") not in ("ddim", "dpmpp", "unipc"):
        raise InputError(f"unknown --scheduler {args.get('scheduler')!r}", subject="--scheduler",
                         remedy="use ddim, dpmpp or unipc")
    if args.get("dtype") not in ("auto", "fp16", "bf16", "fp32"):
        raise InputError(f"unknown --dtype {args.get('dtype')!r}", subject="--dtype", remedy="use auto, fp16, bf16 or fp32")
    size = args.get("size")
    if size is not None and size % 8:
        raise InputError(f"--size {size} must be a multiple of 8 with the aniportrait renderer", subject="--size",
                         remedy="use 512 (AniPortrait's size), 384 or 768")
    if args.get("weights") is not None and not Path(args["weights"]).is_dir():
        raise InputError("not a folder", subject=f"--weights {args['weights']}",
                         remedy="give AniPortrait's pretrained_model folder, or leave --weights out to use the model "
                         "from `a2p models pull aniportrait`")


def renderer_for(args: dict):
    """The render function for --renderer: render_video (embedded) or the diffusion renderer."""
    if args.get("renderer") is not Renderer.aniportrait:
        return None
    from a2pcli.aniportrait.render import DiffusionOptions, render_video_aniportrait

    dopts = DiffusionOptions(steps=args["steps"], cfg=args["cfg"], size=args.get("size") or DEFAULT_CROP_SIZE,
                             seed=args.get("seed") if args.get("seed") is not None else 42, dtype=args["dtype"],
                             low_vram=args["low_vram"], scheduler=args["scheduler"], compat=not args["clean"],
                             acc=args.get("acc", 1), compile=args.get("compile_", False),
                             weights=str(args["weights"]) if args.get("weights") is not None else None)

    def render(portrait, tgt, fps, output, opts, audio, reporter):
        return render_video_aniportrait(portrait, tgt, fps, output, opts, dopts, audio, reporter)

    return render


def run_driven(command: str, args: dict, audio: Path | None) -> None:
    """pose2vid / vid2vid: portrait + driving motion (+ audio) -> video, atomically, with a summary."""
    import json as _json

    from a2pcli.animate import AnimateOptions, PortraitOptions, animate, driving_motion, load_portrait
    from a2pcli.cli.app import finish, session
    from a2pcli.encode import probe_audio
    from a2pcli.outputs import atomic_path
    from a2pcli.progress import Reporter

    portrait_path, driving = args["portrait"], args["driving"]
    out = plan_outputs([portrait_path], driving, args["output"], args["overwrite"])[0]
    popts = PortraitOptions(crop=args["crop"], size=args["size"] or DEFAULT_CROP_SIZE, max_size=args["max_size"],
                            face_index=args["face_index"])
    aopts = AnimateOptions(region=args["region"].value, pose_scale=args["pose_scale"],
                           expression_scale=args["expression_scale"], ref_frame=args["ref_frame"],
                           fps=args.get("fps"), crf=args["crf"], device=args["device"],
                           batch_size=args["batch_size"], frames_dir=args["frames_dir"])
    with session(command, args["progress"], args["quiet"]) as sink:
        reporter = Reporter(sink)
        notes = []
        track = None
        if audio is not None:
            track = probe_audio(audio)
            if track is None:
                raise InputError("has no audio stream", subject=str(audio), remedy="pass a file with sound")
        motion, motion_notes = driving_motion(driving, reporter)
        notes += motion_notes
        if command == "vid2vid" and motion.frame_size != (0, 0) and track is None:
            from a2pcli.media import is_image

            if not is_image(driving) and not str(driving).lower().endswith((".pose", ".npy")):
                track = probe_audio(driving)
                if track is not None and not track.has_sound:
                    notes.append("the driving video's audio is silent: the output has no audio")
                    track = None
        portrait = load_portrait(portrait_path, popts, reporter)
        with atomic_path(out, args["overwrite"]) as tmp:
            summary = animate(portrait, motion, tmp, aopts, audio=track, reporter=reporter, render=renderer_for(args))
            if args["meta"]:
                meta = _meta(command, args, summary, [portrait_path, driving] + ([audio] if audio else []))
                with atomic_path(out.with_suffix(out.suffix + ".json"), True) as mtmp:
                    mtmp.write_text(_json.dumps(meta, indent=2, default=str) + "\n")
        summary = {"output": str(out), "portrait": str(portrait_path), "driving": str(driving), **summary,
                   "notes": notes + summary["notes"]}
        finish(sink, summary, args["json_out"], _human(summary), args["quiet"])


def run_talk(args: dict, portraits: list[Path], audios: list[Path]) -> None:
    """audio2video: speech -> lips (audio2motion model), blinks and head motion -> one video per portrait and
    audio file. The models load once; each audio is decoded and turned into motion once; each portrait is
    found once. In a batch a failing input is reported and the others still render."""
    import json as _json

    from a2pcli.animate import AnimateOptions, PortraitOptions, load_portrait, render_video
    from a2pcli.cli.app import finish, report_failure, session
    from a2pcli.encode import load_audio, probe_audio
    from a2pcli.errors import A2PError
    from a2pcli.headpose import load_reference
    from a2pcli.outputs import atomic_path
    from a2pcli.progress import Reporter
    from a2pcli.render import open_mouth_gap
    from a2pcli.talk import SAMPLE_RATE, TalkOptions, closed_rest, talk_targets

    pairs = [(p, a) for a in audios for p in portraits]
    out_of = dict(zip(pairs, plan_pair_outputs(pairs, args["output"], args["overwrite"])))
    batch = len(pairs) > 1
    fps = float(args["fps"])
    popts = PortraitOptions(crop=args["crop"], size=args["size"] or DEFAULT_CROP_SIZE, max_size=args["max_size"])
    aopts = AnimateOptions(crf=args["crf"], device=args["device"], batch_size=args["batch_size"],
                           frames_dir=args["frames_dir"])
    topts = TalkOptions(template=args["pose"], template_region=args["template_region"].value, still=args["still"],
                        pose_scale=args["pose_scale"], expression_scale=args["expression_scale"],
                        blink_rate=args["blink_rate"], seed=args["seed"])
    aniportrait_motion = args.get("motion") is MotionModel.aniportrait
    results, failures = [], []
    with session("audio2video", args["progress"], args["quiet"]) as sink:
        reporter = Reporter(sink)
        a2m = template = None
        if not aniportrait_motion:
            from a2pcli.audio2motion import load_model

            reporter.stage("load the speech model", total=None)
            a2m = load_model(args["model"])
            if topts.template is not None:
                from a2pcli.motion import load_motion

                template = load_motion(topts.template)
        ref_mean = load_reference().mean
        render = renderer_for(args) or render_video
        found = {}  # portrait path -> its loaded Portrait, for the next audio file
        for audio in audios:
            try:
                reporter.stage("read the audio", total=None)
                track = probe_audio(audio)
                if track is None:
                    raise InputError("has no audio stream", subject=str(audio),
                                     remedy="pass a speech file or a video with sound")
                samples = load_audio(audio, SAMPLE_RATE)
                n = max(1, int(round(len(samples) / SAMPLE_RATE * fps)))
                reporter.stage("speech to motion", total=None)
                speech = lips = None
                if aniportrait_motion:  # AniPortrait's audio2mesh + audio2pose
                    from a2pcli.aniportrait.motion import load_pose_template, speech_motion

                    speech = speech_motion(samples, args["weights"], args["seed"],
                                           load_pose_template(topts.template) if topts.template is not None else None,
                                           topts.still, topts.pose_scale, topts.expression_scale, args["device"],
                                           reporter)
                else:
                    lips = a2m.predict(samples, fps, n)
            except A2PError as exc:
                if not batch:
                    raise
                failures += [((p, audio), exc) for p in portraits]
                report_failure(sink, exc.one_line(), exc.exit_code)
                continue
            for portrait_path in portraits:
                out = out_of[(portrait_path, audio)]
                try:
                    portrait = found.get(portrait_path) or load_portrait(portrait_path, popts, reporter)
                    if len(audios) > 1:  # kept only when another audio file will need it
                        found[portrait_path] = portrait
                    if speech is not None:
                        h, w = portrait.image.shape[:2]
                        tgt, notes = speech.targets(portrait.face.landmarks, w, h, fps, n), list(speech.notes)
                        if topts.template is not None and topts.template_region != "pose":
                            notes.append("--motion aniportrait takes only the head pose from --pose: "
                                         "--template-region is ignored")
                    else:
                        rest = closed_rest(open_mouth_gap(portrait.image, portrait.face), a2m.opening_shape())
                        tgt, notes = talk_targets(portrait.face, samples, fps, n, lips, topts, ref_mean, template,
                                                  rest, image=portrait.image)
                    with atomic_path(out, args["overwrite"]) as tmp:
                        summary = render(portrait, tgt, fps, tmp, aopts, track, reporter)
                        if args["meta"]:
                            inputs = [portrait_path, audio] + ([topts.template] if topts.template else [])
                            meta = _meta("audio2video", args, summary, inputs)
                            with atomic_path(out.with_suffix(out.suffix + ".json"), True) as mtmp:
                                mtmp.write_text(_json.dumps(meta, indent=2, default=str) + "\n")
                    results.append({"output": str(out), "portrait": str(portrait_path), "audio": str(audio),
                                    **summary, "notes": portrait.notes + notes + summary.get("notes", [])})
                except A2PError as exc:
                    if not batch:
                        raise
                    failures.append(((portrait_path, audio), exc))
                    report_failure(sink, exc.one_line(), exc.exit_code)
        summary = results[0] if not batch else {
            "outputs": results,
            "failed": [{"input": str(p), "audio": str(a), "error": e.one_line()} for (p, a), e in failures]}
        finish(sink, summary, args["json_out"], "\n".join(_human(r) for r in results), args["quiet"])
    if failures:
        raise typer.Exit(failures[0][1].exit_code)


def _meta(command: str, args: dict, summary: dict, inputs: list[Path]) -> dict:
    import platform

    import numpy
    import torch

    from a2pcli.cache import sha256_file

    skip = {"progress", "quiet", "json_out"}
    options = {k: (v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v)
               for k, v in args.items() if k not in skip}
    return {
        "command": command,
        "inputs": [{"path": str(p), "size": p.stat().st_size, "sha256": sha256_file(p)} for p in inputs],
        "options": options,
        "versions": {"a2p": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "python": platform.python_version()},
        "summary": summary,
    }


def register(app: typer.Typer) -> None:
    app.command("audio2video")(audio2video)
    app.command("vid2vid")(vid2vid)
    app.command("pose2vid")(pose2vid)
