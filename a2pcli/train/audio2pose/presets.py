"""audio2pose's training presets: the internal knobs of a run, by name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from a2pcli.audio2pose import A2PConfig
from a2pcli.train.core import LoopSettings, TrainOptions


@dataclass(frozen=True)
class PosePreset:
    """Internal knobs of a training run."""

    model: A2PConfig
    epochs: int
    batch_size: int
    lr: float
    steps_per_epoch: int = 100
    crop_s: float = 6.0  # seconds of motion per training crop
    weight_decay: float = 0.01
    warmup_steps: int = 200
    val_share: float = 0.15  # share of speakers held out when --val-speakers is not given
    speaker_cap_s: float = 60.0  # a speaker with more footage than this is sampled as if it had this much
    max_clip_s: float | None = None  # cut clips to this length (tiny preset)
    stretch: float = 0.1  # time-stretch factors drawn from [1 - stretch, 1 + stretch]
    mirror: float = 0.5  # share of crops mirrored left-right (yaw, roll and x change sign)
    cond_drop: float = 0.1  # share of crops trained without the speech (for classifier-free guidance)
    noise_prob: float = 0.3  # share of clips given background noise each epoch
    snr_db: tuple[float, float] = (10.0, 40.0)
    warp: float = 0.08  # vocal-tract-length warp of the mel axis
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # validation and export use an exponential moving average of the weights (0: off)
    val_seeds: int = 3  # motions drawn per held-out clip in validation


PRESETS = {
    # the whole loop in a few seconds on a CPU (CI, smoke tests)
    "tiny": PosePreset(model=A2PConfig(channels=16, audio_dilations=(1,), dilations=(1, 2), steps=2), epochs=2,
                   batch_size=4, lr=2e-3, steps_per_epoch=3, crop_s=1.0, warmup_steps=2, max_clip_s=2.0,
                   val_share=0.5, ema_decay=0.5, val_seeds=1),
    # the shipped model's recipe (models/audio2pose/README.md)
    "default": PosePreset(model=A2PConfig(), epochs=20, batch_size=16, lr=2e-3, crop_s=4.0),
}


def resolve_preset(opts: TrainOptions) -> PosePreset:
    """The preset with the user's --epochs, --batch-size and --lr."""
    p = PRESETS[opts.preset]
    return replace(p, epochs=opts.epochs or p.epochs, batch_size=opts.batch_size or p.batch_size,
                   lr=opts.lr if opts.lr is not None else p.lr)


def preset_dict(p: PosePreset) -> dict:
    d = asdict(p)
    d["model"] = asdict(p.model)
    return d


def preset_from_dict(d: dict, epochs: int) -> PosePreset:
    """A checkpoint's preset, run to `epochs` (the one knob a resumed run may change). ValueError when a value
    is not a number >= 0."""
    d = dict(d)
    d["model"] = A2PConfig.from_dict(d["model"])
    d["snr_db"] = tuple(d["snr_db"])
    known = set(PosePreset.__dataclass_fields__)
    p = replace(PosePreset(**{k: v for k, v in d.items() if k in known}), epochs=epochs)
    numbers = [v for k, v in asdict(p).items() if k not in ("model", "snr_db") and v is not None] + list(p.snr_db)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers):
        raise ValueError("a preset value is not a number >= 0")
    return p


def loop_settings(p: PosePreset) -> LoopSettings:
    return LoopSettings(epochs=p.epochs, steps_per_epoch=p.steps_per_epoch, lr=p.lr, warmup_steps=p.warmup_steps,
                        weight_decay=p.weight_decay, grad_clip=p.grad_clip, ema_decay=p.ema_decay)
