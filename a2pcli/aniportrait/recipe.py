"""Deterministic stand-in weights in AniPortrait's checkpoint format.

Tests rebuild the tiny models of the golden fixtures from `weights_manifest.json` (key, shape,
dtype and fill rule of every tensor); benchmarks build full-size random checkpoints the same
way from the full-size key lists (random weights time the same as real ones).

    fill(ckpt, key, shape, rule, seed)      one float64 array, the recipe's values
    manifest(fixtures)                      the parsed weights_manifest.json
    tiny_state_dicts(fixtures, seed=None)   {ckpt: {key: torch.Tensor}} for every tiny model
    rule_for(key)                           the fill rule a full-size key gets (benchmarks)
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

STD = 0.02


def fill(ckpt: str, key: str, shape, rule: str, seed: int) -> np.ndarray:
    rs = np.random.RandomState(zlib.crc32(f"{ckpt}/{key}".encode("utf-8")) ^ seed)
    a = rs.standard_normal(tuple(int(s) for s in shape)) * STD
    if rule == "norm_weight":
        a = 1.0 + a
    elif rule == "bn_running_var":
        a = np.abs(a) + 0.5
    return a


def sinusoid(length: int, channels: int, dtype=np.float64) -> np.ndarray:
    """(1, length, channels): pe[0,p,2i] = sin(p * exp(2i * -ln(10000)/C)), pe[0,p,2i+1] = cos(...),
    computed in `dtype` (float64 for the motion modules, float32 for Audio2Pose)."""
    pos = np.arange(length, dtype=dtype)[:, None]
    div = np.exp(np.arange(0, channels, 2, dtype=dtype) * dtype(-math.log(10000.0) / channels))
    pe = np.zeros((1, length, channels), dtype=dtype)
    pe[0, :, 0::2] = np.sin(pos * div)
    pe[0, :, 1::2] = np.cos(pos * div)
    return pe


def _torch_sinusoid_f32(length: int, channels: int) -> np.ndarray:
    """Audio2Pose's PPE buffer as the original builds it: torch float32 sin/cos/exp (numpy's float32
    functions round differently in about a third of the entries), widened to float64."""
    import torch

    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels, dtype=torch.float32)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe.numpy().astype(np.float64)


def _keep_value(ckpt: str, key: str, shape) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    if key.endswith("position_ids"):
        return np.arange(shape[-1], dtype=np.int64).reshape(shape)
    if key.endswith("pos_encoder.pe"):
        return sinusoid(shape[1], shape[2], np.float64)
    if key.endswith("PPE.pe") or key.endswith(".pe"):
        return _torch_sinusoid_f32(shape[1], shape[2])
    raise ValueError(f"no 'keep' value known for {ckpt}/{key}")


def manifest(fixtures: str | Path) -> dict:
    return json.loads((Path(fixtures) / "weights_manifest.json").read_text())


def tiny_state_dicts(fixtures: str | Path, seed: int | None = None, check: str = "first",
                     models: tuple[str, ...] | None = None) -> dict:
    """{ckpt namespace: {AniPortrait key: torch tensor}} for the tiny models of the fixtures
    (`models`: manifest model names such as "pose_guider"; default all). `seed` defaults to the
    manifest's; `check` compares the manifest's check values: "first" (first 3 values), "full"
    (also the exact fsum; slow on the 128 M-parameter PoseGuider) or "none"."""
    import torch

    man = manifest(fixtures)
    seed = man["seed"] if seed is None else seed
    out: dict[str, dict] = {}
    for name, entries in man["models"].items():
        if models is not None and name not in models:
            continue
        for e in entries:
            if e["rule"] == "keep":
                a = _keep_value(e["ckpt"], e["key"], e["shape"])
            else:
                a = fill(e["ckpt"], e["key"], e["shape"], e["rule"], seed)
            a = a.astype(np.dtype(e["dtype"]))
            if check != "none" and seed == man["seed"] and e["rule"] != "keep":
                flat = a.reshape(-1)
                if not np.array_equal(flat[:3], np.asarray(e["check_first"], a.dtype)[: flat.size]) or (
                    check == "full" and math.fsum(flat.tolist()) != e["check_fsum"]
                ):
                    raise ValueError(f"recipe mismatch for {e['ckpt']}/{e['key']}")
            out.setdefault(e["ckpt"], {})[e["key"]] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def rule_for(key: str) -> str:
    """The fill rule for a full-size key, from its name (the tiny manifest assigns rules from the
    module type; for timing, any plausible rule will do)."""
    if key.endswith("num_batches_tracked") or key.endswith("position_ids") or key.endswith(".pe"):
        return "keep"
    if key.endswith("running_var"):
        return "bn_running_var"
    if key.endswith("running_mean"):
        return "bn_running_mean"
    if key.endswith(".weight") and any(s in key for s in ("norm", "ln_", "layer_norm", "layernorm")):
        return "norm_weight"
    return "normal"
