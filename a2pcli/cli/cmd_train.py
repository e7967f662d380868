"""`a2p train audio2motion`: train the speech -> motion model on talking videos.

Parse, check the inputs (missing folder -> exit 2, naming it), then call a2pcli.train_a2m.train, which
prepares the data (cached), trains, validates each epoch, checkpoints and exports the model folder.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli.cli.app import finish, session
from a2pcli.cli.options import Device, JsonOut, Progress, ProgressMode, Quiet, Seed
from a2pcli.errors import InputError, OutputError

TRAIN_HELP = "Train a2p's models on your own data. Multi-GPU runs go through torchrun."


class Preset(str, Enum):
    tiny = "tiny"  # seconds to minutes on a CPU: checks the whole loop (CI, smoke tests)
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
    Preset, typer.Option("--preset", help="tiny: minutes on a CPU, to check the set-up; default: the real model.")
]
Epochs = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Passes over the data (default: the preset's).")]
TrainBatch = Annotated[
    Optional[int], typer.Option("--batch-size", min=1, help="Clips per step on each GPU (default: the preset's).")
]
LearningRate = Annotated[
    Optional[float], typer.Option("--lr", min=0.0, help="Peak learning rate (default: the preset's).")
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


def check_training_inputs(data: list[Path], output: Path, resume: Path | None, val_speakers: str | None) -> None:
    for folder in data:
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "not found"
            raise InputError(f"data folder {what}", subject=str(folder), remedy="--data takes a folder of videos")
    if resume is not None and not resume.exists():
        raise InputError("checkpoint not found", subject=str(resume), remedy="check the --resume path")
    if output.exists() and not output.is_dir():
        raise OutputError("is a file; the model output is a folder", subject=str(output), remedy="choose another -o")
    if val_speakers is not None and not any(s.strip() for s in val_speakers.split(",")):
        raise InputError("names no speaker", subject="--val-speakers", remedy="e.g. --val-speakers spk01,spk07")


def audio2motion(
    data: DataDirs,
    output: ModelDir,
    preset: PresetOpt = Preset.default,
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

    The model drives lips, expression, blinks and head pose from speech.

    \b
    One GPU, or the CPU with --preset tiny:
      a2p train audio2motion --data clips/ -o my-model
    Several GPUs: the same command through torchrun (rank 0 logs and saves):
      torchrun --nproc-per-node 4 -m a2pcli train audio2motion --data clips/ -o my-model

    Use the result with `a2p audio2video --model my-model`.
    """
    from a2pcli.train_a2m import TrainOptions, output_check, train
    from a2pcli.progress import Reporter

    check_training_inputs(data, output, resume, val_speakers)
    output_check(output)
    opts = TrainOptions(
        data=tuple(data), output=output, preset=preset.value, epochs=epochs, batch_size=batch_size, lr=lr,
        val_speakers=tuple(s.strip() for s in val_speakers.split(",") if s.strip()) if val_speakers else None,
        resume=resume, seed=seed, device=device,
    )
    with session("train audio2motion", progress, quiet) as sink:
        summary = train(opts, Reporter(sink))
    finish(sink, summary, json_out, _human(summary), quiet)


PosesDirs = Annotated[
    Optional[list[Path]],
    typer.Option("--poses", help="Folder of .pose files named after the videos (a2p extract-pose output), used "
                 "instead of finding the landmarks again when made from the same file. Repeat for several.",
                 show_default=False),
]


def mouth(
    data: DataDirs,
    output: ModelDir,
    preset: PresetOpt = Preset.default,
    epochs: Epochs = None,
    batch_size: TrainBatch = None,
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
    Speech is not needed. Prepared crops are cached in the model folder.

    \b
      a2p train mouth --data clips/ -o my-mouth
      a2p train mouth --data clips/ -o my-mouth --resume my-mouth      (continue)

    Use the result with `--mouth-model my-mouth`.
    """
    from a2pcli.progress import Reporter
    from a2pcli.train_mouth import TrainOptions, output_check, train

    check_training_inputs(data, output, resume, val_speakers)
    for folder in poses or []:
        if not folder.is_dir():
            raise InputError("--poses folder not found", subject=str(folder), remedy="--poses takes a folder of .pose files")
    output_check(output)
    opts = TrainOptions(
        data=tuple(data), output=output, preset=preset.value, epochs=epochs, batch_size=batch_size, lr=lr,
        val_speakers=tuple(s.strip() for s in val_speakers.split(",") if s.strip()) if val_speakers else None,
        poses=tuple(poses or ()), resume=resume, seed=seed, device=device,
    )
    with session("train mouth", progress, quiet) as sink:
        summary = train(opts, Reporter(sink))
    finish(sink, summary, json_out, _human_mouth(summary), quiet)


def _human_mouth(s: dict) -> str:
    v = s.get("validation") or {}
    metrics = ""
    if "val_ssim" in v:
        metrics = (f"; validation mouth crops SSIM {v['val_ssim']:.3f} (warp alone {v['val_ssim_warp']:.3f}), "
                   f"PSNR {v['val_psnr']:.2f} dB (warp alone {v['val_psnr_warp']:.2f}), sharpness x{v['val_sharpness']}")
    d = s["data"]
    return (f"{s['output']}: {s['epochs']} epochs ({s['steps']} steps) on {d['train']['samples']} samples of "
            f"{d['train']['speakers']} speakers, {d['val']['speakers']} speakers held out{metrics}; "
            f"{s['elapsed_s']:.0f} s")


def _human(s: dict) -> str:
    v = s.get("validation") or {}
    metrics = ""
    if "val_mouth_r" in v:
        metrics = (f"; validation mouth-opening r {v['val_mouth_r']:.3f} (loudness envelope {v['val_envelope_r']:.3f}), "
                   f"spread x{v['val_std_ratio']}")
    d = s["data"]
    return (f"{s['output']}: {s['epochs']} epochs ({s['steps']} steps) on {d['train']['clips']} clips of "
            f"{d['train']['speakers']} speakers, {d['val']['clips']} clips of {d['val']['speakers']} held out{metrics}; "
            f"{s['elapsed_s']:.0f} s")


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
    train_app.command("audio2motion")(audio2motion)
    train_app.command("mouth")(mouth)
    app.add_typer(train_app, name="train", help=TRAIN_HELP)
