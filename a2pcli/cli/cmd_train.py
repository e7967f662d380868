"""`a2p train audio2motion`: train the speech -> motion model on talking videos.

Parse, then call a2pcli.train.audio2motion.train, which checks the inputs (a missing folder -> exit 2, naming
it), prepares the data (cached), trains, validates each epoch, checkpoints and exports the model folder.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli.cli.app import finish, session
from a2pcli.cli.options import Device, JsonOut, Progress, ProgressMode, Quiet, Seed

TRAIN_HELP = "Train a2p's models on your own data (on the CPU or one GPU)."


class Preset(str, Enum):
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
    Preset,
    typer.Option("--preset", help="tiny: the whole loop in seconds on a CPU, to check the set-up; "
                 "default: the real model."),
]
Epochs = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Passes over the data (default: the preset's).")]
TrainBatch = Annotated[
    Optional[int], typer.Option("--batch-size", min=1, help="Clips per step (default: the preset's).")
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

    The model moves the lips, jaw and cheeks with the speech.

    \b
    On one GPU (or the CPU, slowly; --preset tiny checks the set-up in seconds):
      a2p train audio2motion --data clips/ -o my-model
    Continue an interrupted run:
      a2p train audio2motion --data clips/ -o my-model --resume my-model

    Use the result with `a2p audio2video --model my-model`.
    """
    from a2pcli.train.audio2motion import train

    opts = train_options(data, output, preset.value, epochs, batch_size, lr, val_speakers, resume, seed, device)
    run_trainer("audio2motion", train, opts, progress, quiet, json_out, _human_audio2motion)


def train_options(data: list[Path], output: Path, preset: str, epochs: int | None, batch_size: int | None,
                  lr: float | None, val_speakers: str | None, resume: Path | None, seed: int, device: str):
    """The flags every `a2p train <name>` shares, as the library's TrainOptions."""
    from a2pcli.train.core import TrainOptions

    held_out = None if val_speakers is None else tuple(s.strip() for s in val_speakers.split(",") if s.strip())
    return TrainOptions(data=tuple(data), output=output, preset=preset, epochs=epochs, batch_size=batch_size, lr=lr,
                        val_speakers=held_out, resume=resume, seed=seed, device=device)


def run_trainer(name: str, train, opts, progress: ProgressMode, quiet: bool, json_out: bool, human) -> None:
    """Run one trainer's `train(opts, reporter) -> summary` with the progress display, then report."""
    from a2pcli.progress import Reporter

    with session(f"train {name}", progress, quiet) as sink:
        summary = train(opts, Reporter(sink))
    finish(sink, summary, json_out, human(summary), quiet)


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


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
    train_app.command("audio2motion")(audio2motion)
    app.add_typer(train_app, name="train", help=TRAIN_HELP)
