"""audio2motion's training presets: the internal knobs of a run, by name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from a2pcli.audio2motion import A2MConfig
from a2pcli.train.core import LoopSettings, TrainOptions


@dataclass(frozen=True)
class Preset:
    """Internal knobs of a training run."""

    model: A2MConfig
    epochs: int
    batch_size: int
    lr: float
    crop_s: float = 3.0  # seconds of targets per training crop
    weight_decay: float = 0.01
    warmup_steps: int = 100
    val_share: float = 0.15  # share of speakers held out when --val-speakers is not given
    speaker_cap_s: float = 150.0  # a speaker with more footage than this is sampled as if it had this much
    steps_per_epoch: int | None = None  # None: the effective data length over the batch's seconds
    max_clip_s: float | None = None  # cut clips to this length (tiny preset)
    silence_share: float = 0.05  # share of crops that are pure silence with a closed mouth
    stretch: float = 0.1  # time-stretch factors drawn from [1 - stretch, 1 + stretch]
    warp: float = 0.08  # vocal-tract-length warp of the mel axis, factors in [1 - warp, 1 + warp]
    noise_prob: float = 0.5  # share of clips given background noise each epoch
    snr_db: tuple[float, float] = (8.0, 40.0)
    freq_masks: int = 0  # SpecAugment: this many bands of random width (up to freq_mask_bands) zeroed per crop
    freq_mask_bands: int = 0
    loss_codes: float = 1.0  # weights of the loss terms
    loss_gap: float = 1.0
    loss_velocity: float = 0.5
    loss_corr: float = 0.2  # 1 - concordance of the lip gap per crop (correlation and spread)
    loss_pearson: float = 0.0  # 1 - Pearson correlation of the lip gap per crop (timing and shape only)
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # validation and export use an exponential moving average of the weights (0: off)
    calibrate_spread: bool = True  # scale the output so the training clips' mouth-opening spread matches


PRESETS = {
    # the whole loop in about 20 s on a CPU (CI, smoke tests)
    "tiny": Preset(model=A2MConfig(channels=32, dilations=(1, 2, 4), n_codes=8, dropout=0.0), epochs=2,
                   batch_size=4, lr=2e-3, crop_s=1.0, warmup_steps=2, steps_per_epoch=3, max_clip_s=2.0,
                   val_share=0.5, ema_decay=0.5),
    # the shipped model's recipe (models/audio2motion/README.md): a wider net, a high learning rate, long
    # speakers sampled down hard, and a loss led by the lip gap's per-crop concordance (correlation and
    # level: the mouth must still close between syllables)
    "default": Preset(model=A2MConfig(channels=192), epochs=70, batch_size=32, lr=2e-3, speaker_cap_s=60.0,
                      loss_codes=0.2, loss_gap=1.0, loss_velocity=0.1, loss_corr=3.0),
}


def resolve_preset(opts: TrainOptions) -> Preset:
    """The preset with the user's --epochs, --batch-size and --lr."""
    p = PRESETS[opts.preset]
    return replace(p, epochs=opts.epochs or p.epochs, batch_size=opts.batch_size or p.batch_size,
                   lr=opts.lr if opts.lr is not None else p.lr)


def preset_dict(p: Preset) -> dict:
    d = asdict(p)
    d["model"] = asdict(p.model)
    return d


def preset_from_dict(d: dict, epochs: int) -> Preset:
    """A checkpoint's preset, run to `epochs` (the one knob a resumed run may change)."""
    d = dict(d)
    d["model"] = A2MConfig.from_dict(d["model"])
    d["snr_db"] = tuple(d["snr_db"])
    known = set(Preset.__dataclass_fields__)
    p = replace(Preset(**{k: v for k, v in d.items() if k in known}), epochs=epochs)
    numbers = [v for k, v in asdict(p).items() if k not in ("model", "snr_db") and v is not None]
    numbers += list(p.snr_db) + [v for v in asdict(p.model).values() if not isinstance(v, (tuple, list))]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers):
        raise ValueError("a preset value is not a number >= 0")
    return p


def loop_settings(p: Preset, steps_per_epoch: int) -> LoopSettings:
    return LoopSettings(epochs=p.epochs, steps_per_epoch=steps_per_epoch, lr=p.lr, warmup_steps=p.warmup_steps,
                        weight_decay=p.weight_decay, grad_clip=p.grad_clip, ema_decay=p.ema_decay)
