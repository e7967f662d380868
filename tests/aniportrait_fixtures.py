"""Access to AniPortrait's golden fixtures for the diffusion-renderer tests.

The folder comes from A2P_ANIPORTRAIT_FIXTURES (default: the shared fixtures folder), and the weight
seed from its manifest, so the same tests run unchanged against fixtures made with another seed.
Tests that need the folder skip with a message when it is absent.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED

FIXTURES = Path(os.environ.get("A2P_ANIPORTRAIT_FIXTURES", SHARED / "fixtures" / "aniportrait"))


def folder() -> Path:
    if not (FIXTURES / "weights_manifest.json").exists():
        pytest.skip(f"AniPortrait fixtures {FIXTURES} not present (set A2P_ANIPORTRAIT_FIXTURES)")
    return FIXTURES


def seed() -> int:
    return int(json.loads((folder() / "weights_manifest.json").read_text())["seed"])


@functools.lru_cache(maxsize=None)
def _npz(name: str) -> dict:
    with np.load(folder() / name) as z:
        return {k: z[k] for k in z.files}


def arrays(name: str) -> dict:
    """All arrays of `name` (e.g. "pose_guider.npz"), loaded once per test session."""
    return _npz(name)


def configs() -> dict:
    return json.loads((folder() / "configs.json").read_text())


def summary() -> dict:
    return json.loads((folder() / "summary.json").read_text())


@functools.lru_cache(maxsize=None)
def _weights(models: tuple[str, ...] | None) -> dict:
    from a2pcli.aniportrait.recipe import tiny_state_dicts

    return tiny_state_dicts(folder(), seed(), models=models)


def weights(*models: str) -> dict:
    """{ckpt namespace: {key: tensor}} of the tiny models named (manifest names such as
    "pose_guider"; none: all), rebuilt from the recipe once per session. Do not modify them."""
    return _weights(tuple(models) if models else None)


def close(actual, expected, rel: float = 1e-9, what: str = "") -> None:
    """|actual - expected| <= rel * max|expected|, with a message naming the worst element."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = max(float(np.abs(e).max()), 1e-300)
    err = float(np.abs(a - e).max())
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel:g} x {scale:.3g}"
