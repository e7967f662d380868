"""The mouth model's training presets: the internal knobs of a run, by name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from a2pcli.mouthnet import MouthConfig
from a2pcli.train.core import LoopSettings, TrainOptions


@dataclass(frozen=True)
class MouthPreset:
    """Internal knobs of a training run."""

    model: MouthConfig
    epochs: int
    batch_size: int
    lr: float
    steps_per_epoch: int = 400
    warmup_steps: int = 200
    portraits_per_clip: int = 3  # the first frame, the widest open mouth, a closed mouth
    stride: int = 2  # every stride-th frame is a target
    max_targets: int = 240  # per portrait frame (evenly spread over the clip)
    max_clip_s: float | None = None  # cut clips to this length (tiny preset)
    val_share: float = 0.15  # share of speakers held out when --val-speakers is not given
    speaker_cap: int = 1200  # a speaker with more samples than this is sampled as if it had this many
    speaker_clips: int = 40  # a speaker with more clips than this has only this many prepared (spread by name)
    loss_l1: float = 1.0
    loss_ssim: float = 0.5
    loss_grad: float = 0.5
    loss_adv: float = 0.02  # adversarial patch loss (0: off)
    adv_start: int = 1000  # steps before the adversarial loss starts
    disc_channels: int = 32
    ema_decay: float = 0.998  # validation and export use an exponential moving average of the weights (0: off)
    grad_clip: float = 1.0
    max_val_samples: int = 3000
    colour_jitter: float = 0.06  # std of the random colour matrix around the identity
    grey_share: float = 0.1  # share of samples turned grey (black-and-white portraits)
    swap_share: float = 0.15  # share of samples whose colour channels are permuted (paintings, cartoons)


BETAS = (0.9, 0.99)  # AdamW's, for the network (the discriminator's first moment decays faster: DISC_BETAS)
DISC_BETAS = (0.5, 0.99)

PRESETS = {
    # the whole loop in a few seconds on a CPU (CI, smoke tests)
    "tiny": MouthPreset(model=MouthConfig(size=32, channels=(8, 16)), epochs=2, batch_size=4, lr=2e-3,
                        steps_per_epoch=3, warmup_steps=2, portraits_per_clip=1, stride=4, max_targets=6,
                        max_clip_s=1.0, val_share=0.5, adv_start=2, disc_channels=8, ema_decay=0.5,
                        max_val_samples=16),
    # the shipped model's recipe (models/mouth/README.md): 5,568 steps of 64 crops, about 2 minutes on one GPU
    "default": MouthPreset(model=MouthConfig(), epochs=12, batch_size=64, lr=1.5e-3, steps_per_epoch=464,
                           warmup_steps=300, adv_start=1670, loss_adv=0.05, loss_grad=1.0),
}


def resolve_preset(opts: TrainOptions) -> MouthPreset:
    """The preset with the user's --epochs, --batch-size and --lr."""
    p = PRESETS[opts.preset]
    return replace(p, epochs=opts.epochs or p.epochs, batch_size=opts.batch_size or p.batch_size,
                   lr=opts.lr if opts.lr is not None else p.lr)


def preset_dict(p: MouthPreset) -> dict:
    d = asdict(p)
    d["model"] = asdict(p.model)
    d["model"]["channels"] = list(p.model.channels)
    return d


def preset_from_dict(d: dict, epochs: int) -> MouthPreset:
    """A checkpoint's preset, run to `epochs` (the one knob a resumed run may change). ValueError when a value
    is not a number >= 0 (or None where the preset allows it)."""
    d = dict(d)
    d["model"] = MouthConfig.from_dict(d["model"])
    known = set(MouthPreset.__dataclass_fields__)
    p = replace(MouthPreset(**{k: v for k, v in d.items() if k in known}), epochs=epochs)
    numbers = [v for k, v in asdict(p).items() if k != "model" and v is not None]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
               for v in numbers):
        raise ValueError("a preset value is not a number >= 0")
    if p.batch_size < 1 or p.steps_per_epoch < 1:
        raise ValueError("the batch size and the steps per epoch must be at least 1")
    return p


def loop_settings(p: MouthPreset) -> LoopSettings:
    return LoopSettings(epochs=p.epochs, steps_per_epoch=p.steps_per_epoch, lr=p.lr, warmup_steps=p.warmup_steps,
                        weight_decay=0.0, grad_clip=p.grad_clip, ema_decay=p.ema_decay)
