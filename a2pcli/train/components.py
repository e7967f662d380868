"""The models `a2p train` trains, by name: what `a2p train all` trains.

Adding a trainer to `train all` is one line in COMPONENTS: its name (the model folder <models>/<name>/), where
its `train(TrainOptions, Reporter) -> summary dict` is, its presets, and where its
`prepare_data(TrainOptions, Reporter) -> dict` is (optional: it fills the shared data cache, a2pcli.train.clips,
before any component trains, so the data is prepared once; its dict, e.g. {"clips": 40, "seconds": 1200.0}, is
shown and kept in the summary). Entries are "package.module:function" strings, imported
only when used, so reading the registry costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    train: str  # "package.module:function": train(TrainOptions, Reporter) -> summary dict
    presets: tuple[str, ...]  # its preset names (`a2p train all --preset` must be one of every component's)
    prepare: str | None = None  # "package.module:function": prepare_data(TrainOptions, Reporter) -> dict, or None


COMPONENTS: dict[str, Component] = {
    "audio2motion": Component("a2pcli.train.audio2motion:train", ("tiny", "default"),
                              "a2pcli.train.audio2motion:prepare_data"),
    "audio2pose": Component("a2pcli.train.audio2pose:train", ("tiny", "default"),
                            "a2pcli.train.audio2pose:prepare_data"),
    "mouth": Component("a2pcli.train.mouth:train", ("tiny", "default"), "a2pcli.train.mouth:prepare_data"),
}


def load_entry(spec: str) -> Callable:
    """The function a "package.module:function" entry names."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
