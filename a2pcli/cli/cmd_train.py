"""`a2p train <component>` and `a2p train all`: train a2p's models on talking videos.

`a2p train audio2motion` (and `audio2pose`, `mouth`) parses, then calls a2pcli.train.audio2motion.train (and
a2pcli.train.audio2pose.train, a2pcli.train.mouth.train), which checks the inputs (a missing folder -> exit 2,
naming it), prepares the data (cached), trains, validates each epoch, checkpoints and exports the model folder.
Under torchrun every process runs the command; rank 0 alone shows progress and the summary.
`a2p train all` calls a2pcli.train.suite.train_all.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli.cli.app import finish, report_failure, session
from a2pcli.cli.options import Device, JsonOut, Progress, ProgressMode, Quiet, Seed

TRAIN_HELP = ("Train a2p's models on your own data: on the CPU, a GPU, several GPUs or machines (through torchrun), "
              "or every model at once (`train all`).")


class PresetName(str, Enum):
    tiny = "tiny"  # seconds on a CPU: checks the whole loop (CI, smoke tests)
    default = "default"


DataDirs = Annotated[
    list[Path],
    typer.Option("--data", help="Folder of talking videos with speech (searched recursively). Repeat for several.",
                 show_default=False),
]
ModelDir = Annotated[
    Path,
    typer.Option("--output", "-o", help="Model folder to write: config, safetensors weights, checkpoints, logs.",
                 show_default=False),
]
PresetOpt = Annotated[
    PresetName,
    typer.Option("--preset", help="tiny: the whole loop in seconds on a CPU, to check the set-up; "
                 "default: the real model."),
]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Passes over the data (default: the preset's).")]
TrainBatch = Annotated[
    Optional[int], typer.Option("--batch-size", help="Clips per step (default: the preset's).")
]
LearningRate = Annotated[
    Optional[float], typer.Option("--lr", help="Peak learning rate, above 0 and at most 1 (default: the preset's).")
]
ValSpeakers = Annotated[
    Optional[str],
    typer.Option("--val-speakers", help="Comma-separated speakers (folder names) held out for validation "
                 "(default: a fixed share of speakers picked by --seed)."),
]
Resume = Annotated[
    Optional[Path],
    typer.Option("--resume", help="Continue from this checkpoint (model, optimizer, step and config), "
                 "or from the last one in this model folder."),
]
PosesDirs = Annotated[
    Optional[list[Path]],
    typer.Option("--poses", help="Folder of .pose files named after the videos (a2p extract-pose output), used "
                 "instead of finding the landmarks again when made from the same file. Repeat for several.",
                 show_default=False),
]


def audio2motion(
    data: DataDirs,
    output: ModelDir,
    preset: PresetOpt = PresetName.default,
    epochs: Epochs = None,
    batch_size: TrainBatch = None,
    lr: LearningRate = None,
    val_speakers: ValSpeakers = None,
    resume: Resume = None,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Train the speech -> motion model on talking videos.

    The model moves the lips, jaw and cheeks with the speech.

    \b
    On one GPU (or the CPU, slowly; --preset tiny checks the set-up in seconds):
      a2p train audio2motion --data clips/ -o my-model
    Continue an interrupted run:
      a2p train audio2motion --data clips/ -o my-model --resume my-model
    On the 4 GPUs of this machine (--batch-size is the whole step's, shared out):
      torchrun --standalone --nproc-per-node 4 -m a2pcli train audio2motion --data clips/ -o my-model

    Use the result with `a2p audio2video --model my-model`.
    """
    from a2pcli.train.audio2motion import train

    opts = train_options(data, output, preset.value, epochs, batch_size, lr, val_speakers, resume, seed, device)
    run_trainer("audio2motion", train, opts, progress, quiet, json_out, _human_audio2motion)


def audio2pose(
    data: Annotated[
        list[Path],
        typer.Option("--data", help="Folder of talking videos with speech (searched recursively), or a folder of "
                     "prepared datasets (the dataset.npz a run writes into its model folder). Repeat for several.",
                     show_default=False),
    ],
    output: ModelDir,
    preset: PresetOpt = PresetName.default,
    epochs: Epochs = None,
    batch_size: TrainBatch = None,
    lr: LearningRate = None,
    val_speakers: ValSpeakers = None,
    resume: Resume = None,
    poses: PosesDirs = None,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Train the speech -> head motion model on talking videos.

    The model turns speech into head rotation and translation; several motions fit one speech, and
    `a2p audio2video --seed` picks one.

    \b
    On the CPU (--preset tiny checks the set-up in seconds) or one GPU:
      a2p train audio2pose --data clips/ -o my-pose-model
    Again, on another machine, from the data the first run prepared (no videos, no MediaPipe):
      a2p train audio2pose --data my-pose-model/ -o my-pose-model-2
    Continue an interrupted run:
      a2p train audio2pose --data clips/ -o my-pose-model --resume my-pose-model

    Use the result with `a2p audio2video --head my-pose-model`.
    """
    from functools import partial

    from a2pcli.train.audio2pose import train

    opts = train_options(data, output, preset.value, epochs, batch_size, lr, val_speakers, resume, seed, device)
    run_trainer("audio2pose", partial(train, poses=tuple(poses or ())), opts, progress, quiet, json_out,
                _human_audio2pose)


def train_options(data: list[Path], output: Path, preset: str, epochs: int | None, batch_size: int | None,
                  lr: float | None, val_speakers: str | None, resume: Path | None, seed: int, device: str):
    """The flags every `a2p train <name>` shares, as the library's TrainOptions."""
    from a2pcli.train.core import TrainOptions

    held_out = None if val_speakers is None else tuple(s.strip() for s in val_speakers.split(",") if s.strip())
    return TrainOptions(data=tuple(data), output=output, preset=preset, epochs=epochs, batch_size=batch_size, lr=lr,
                        val_speakers=held_out, resume=resume, seed=seed, device=device)


def run_trainer(name: str, train, opts, progress: ProgressMode, quiet: bool, json_out: bool, human) -> None:
    """Run one trainer's `train(opts, reporter) -> summary` with the progress display, then report. Under
    torchrun the processes other than rank 0 show nothing (see `_other_rank`)."""
    from a2pcli.progress import Reporter
    from a2pcli.train.core import launch_from_env

    launch = launch_from_env()
    if launch.rank != 0:
        _other_rank(train, opts, launch)
        return
    with session(f"train {name}", progress, quiet) as sink:
        summary = train(opts, Reporter(sink))
    finish(sink, summary, json_out, human(summary), quiet)


def _other_rank(train, opts, launch) -> None:
    """A torchrun process other than rank 0: no progress, no summary. It fails with its own exit code (torchrun
    then stops the others and exits non-zero). Its error line is printed when rank 0 may not meet the same
    failure: always by the first process of another node; by the others only for failures of their own machine
    or device (bad input and interrupts, which every process meets alike, are left to rank 0)."""
    import sys

    from a2pcli.errors import EXIT_FAILED, EXIT_INTERRUPTED, A2PError, EnvironmentProblem
    from a2pcli.progress import Reporter

    try:
        train(opts, Reporter())
        return
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except A2PError as exc:
        message, code, own = exc.one_line(), exc.exit_code, isinstance(exc, EnvironmentProblem)
    except Exception as exc:  # noqa: BLE001 - reported like the error boundary does, with the rank
        message, code, own = f"unexpected {type(exc).__name__}: {exc}", EXIT_FAILED, True
    if own or launch.local_rank == 0:
        sys.stderr.write(f"error: rank {launch.rank}: {message}\n")
    if not own:  # rank 0 meets it too: leave after it, so that torchrun reports rank 0's error line alone
        import signal
        import time

        from a2pcli.pipeline.shards import FAILED_EXIT_GRACE_S

        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by torchrun meanwhile: silently
        time.sleep(FAILED_EXIT_GRACE_S)
    raise typer.Exit(code)


def _human_audio2motion(s: dict) -> str:
    v = s.get("validation") or {}
    metrics = ""
    if "val_mouth_r" in v:
        metrics = (f"; validation mouth-opening r {v['val_mouth_r']:.3f} (loudness envelope {v['val_envelope_r']:.3f}), "
                   f"spread x{v['val_std_ratio']}")
    d = s["data"]
    return (f"{s['output']}: {s['epochs']} epochs ({s['steps']} steps) on {d['train']['clips']} clips of "
            f"{d['train']['speakers']} speakers, {d['val']['clips']} clips of {d['val']['speakers']} held out{metrics}; "
            f"{s['elapsed_s']:.0f} s")


def _human_audio2pose(s: dict) -> str:
    v = s.get("validation") or {}
    metrics = ""
    if "val_model_std_ratio" in v:
        fmt = lambda x: "/".join(f"{a:.2f}" for a in x)  # noqa: E731
        metrics = (f"; held out: spread x{fmt(v['val_model_std_ratio'])} and speed "
                   f"x{fmt(v['val_model_velocity_ratio'])} of the real motion (yaw/pitch/roll), head speed vs speech onsets r {v['val_model_onset_r']:.3f} "
                   f"(real {v['val_real_onset_r']:.3f})")
    d = s["data"]
    return (f"{s['output']}: {s['epochs']} epochs ({s['steps']} steps) on {d['train']['clips']} clips of "
            f"{d['train']['speakers']} speakers, {d['val']['clips']} clips of {d['val']['speakers']} held out{metrics}; "
            f"{s['elapsed_s']:.0f} s")


def mouth(
    data: DataDirs,
    output: ModelDir,
    preset: PresetOpt = PresetName.default,
    epochs: Epochs = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Mouth crops per step (default: "
                                                      "the preset's).")] = None,
    lr: LearningRate = None,
    val_speakers: ValSpeakers = None,
    poses: PosesDirs = None,
    resume: Resume = None,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Train the mouth model (lips, teeth, tongue of the embedded renderer) on talking videos.

    Self-reenactment: a frame of each video is the portrait, its other frames drive it and are the truth.
    Speech is not needed. The prepared mouth crops are cached (the a2p cache's train-data).

    \b
    On one GPU (or the CPU, slowly; --preset tiny checks the set-up in seconds):
      a2p train mouth --data clips/ -o my-mouth
    Continue an interrupted run:
      a2p train mouth --data clips/ -o my-mouth --resume my-mouth
    On the 4 GPUs of this machine (--batch-size is the whole step's, shared out):
      torchrun --standalone --nproc-per-node 4 -m a2pcli train mouth --data clips/ -o my-mouth

    Use the result with `--mouth-model my-mouth` (audio2video, vid2vid, pose2vid).
    """
    from functools import partial

    from a2pcli.train.mouth import train

    opts = train_options(data, output, preset.value, epochs, batch_size, lr, val_speakers, resume, seed, device)
    run_trainer("mouth", partial(train, poses=tuple(poses or ())), opts, progress, quiet, json_out, _human_mouth)


def _human_mouth(s: dict) -> str:
    v = s.get("validation") or {}
    metrics = ""
    if "val_ssim" in v:
        metrics = (f"; validation mouth crops SSIM {v['val_ssim']:.3f} (warp alone {v['val_ssim_warp']:.3f}), "
                   f"PSNR {v['val_psnr']:.2f} dB (warp alone {v['val_psnr_warp']:.2f}), "
                   f"sharpness x{v['val_sharpness']}")
    d = s["data"]
    return (f"{s['output']}: {s['epochs']} epochs ({s['steps']} steps) on {d['train']['samples']} samples of "
            f"{d['train']['speakers']} speakers, {d['val']['speakers']} speakers held out{metrics}; "
            f"{s['elapsed_s']:.0f} s")


ModelsDir = Annotated[
    Path,
    typer.Option("--output", "-o", help="Folder of models to write: one model folder per component in it.",
                 show_default=False),
]
Gpus = Annotated[
    Optional[str],
    typer.Option("--gpus", help="GPUs to train on at the same time, one component per GPU (e.g. 0,1,2, or all). "
                 "Default: one component after the other on --device.", show_default=False),
]
ResumeAll = Annotated[
    bool, typer.Option("--resume", help="Continue each component from the last checkpoint in its model folder.")
]
Only = Annotated[
    Optional[str], typer.Option("--only", help="Comma-separated components to train (default: all of them).")
]


def train_all(
    data: DataDirs,
    output: ModelsDir,
    preset: PresetOpt = PresetName.default,
    val_speakers: ValSpeakers = None,
    gpus: Gpus = None,
    resume: ResumeAll = False,
    only: Only = None,
    seed: Seed = 0,
    device: Device = "auto",
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Train every model a2p ships, each into a folder of its own.

    The data is prepared once (landmarks, head pose and speech features, cached) and shared by all
    components. With --gpus each component trains on a GPU of its own at the same time; otherwise they
    train one after the other. A component that fails is reported and the others finish; the exit code
    is then the first failure's.

    \b
      a2p train all --data clips/ -o models/                 # models/audio2motion/, ...
      a2p train all --data clips/ -o models/ --gpus 0,1,2
      a2p train all --data clips/ -o models/ --resume        # continue each from its checkpoint
    """
    from a2pcli.progress import Reporter
    from a2pcli.train.suite import AllOptions
    from a2pcli.train.suite import train_all as run_all

    held_out = None if val_speakers is None else tuple(s.strip() for s in val_speakers.split(",") if s.strip())
    names = None if only is None else tuple(s.strip() for s in only.split(",") if s.strip())
    opts = AllOptions(data=tuple(data), output=output, preset=preset.value, val_speakers=held_out, seed=seed,
                      device=device, gpus=gpus, resume=resume, only=names)
    with session("train all", progress, quiet) as sink:
        summary = run_all(opts, Reporter(sink))
        failed = [(n, summary["components"][n]) for n in summary["failed"]]
        for name, row in failed:
            report_failure(sink, f"{name}: {row['error']}", row["exit_code"])
        finish(sink, summary, json_out, _human_all(summary), quiet)
    if failed:
        raise typer.Exit(failed[0][1]["exit_code"])


def _human_all(s: dict) -> str:
    lines = []
    for name, row in s["components"].items():
        secs = sum(row["seconds"].values())
        if row["status"] == "ok":
            lines.append(f"{name}: trained in {secs:.0f} s on {row['device']} -> {row['output']}")
        else:
            lines.append(f"{name}: FAILED ({row['stage']}, exit {row['exit_code']}) after {secs:.0f} s")
    lines.append(f"{len(s['trained'])} of {len(s['components'])} components trained in {s['elapsed_s']:.0f} s")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
    train_app.command("audio2motion")(audio2motion)
    train_app.command("audio2pose")(audio2pose)
    train_app.command("mouth")(mouth)
    train_app.command("all")(train_all)
    app.add_typer(train_app, name="train", help=TRAIN_HELP)
