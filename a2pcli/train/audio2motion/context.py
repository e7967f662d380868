"""Everything one audio2motion run works with, passed to the loop, evaluation and export as one object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2pcli.audio2motion import A2MConfig
from a2pcli.train.audio2motion.data import ClipData
from a2pcli.train.audio2motion.presets import Preset
from a2pcli.train.audio2motion.targets import Targets
from a2pcli.train.core import Runtime, TrainOptions


@dataclass
class Context:
    clips: list[ClipData]
    train_idx: list[int]
    val_idx: list[int]
    cw: dict[int, float]  # training clip index -> effective seconds (clips.sampling_weights)
    tg: Targets
    cfg: A2MConfig
    p: Preset
    opts: TrainOptions
    runtime: Runtime
    reference: np.ndarray  # (478, 3) the canonical face (a2pcli.headpose.load_reference().mean)
    out: Path

    @property
    def device(self) -> str:
        return self.runtime.device
