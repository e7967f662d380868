"""Speech -> lower-face expression: the `audio2motion` model.

    load_model(name_or_path=None, device="cpu") -> Audio2Motion
    Audio2Motion.predict(audio, fps, n_frames=None) -> (T, 478, 3) float32 expression deltas

`audio`: (N,) float32 mono at 16 kHz (a2pcli.audio.load_audio gives that). The output is a delta to
add to a face's `expression` in the canonical space of the `.pose` format (a2pcli.motion: face units,
the outer eye corners 1 apart, head pose removed). It moves the lips, jaw, chin and lower cheeks and is
exactly zero elsewhere; it is relative to a CLOSED mouth at rest, so silence gives about zero and a
portrait keeps its own closed mouth.

How: normalised log-mel features (a2pcli.features, 100 Hz) -> a temporal conv net (a strided input conv
to 50 Hz, dilated residual blocks that see about +-0.6 s of speech, optionally a bidirectional GRU) ->
N_CODES coefficients of a linear basis of lower-face landmark displacements (learnt from talking videos,
stored with the weights) -> linear resampling to the video's frame times -> expansion to the 478 landmarks.

A model folder holds `config.json` (this module's A2MConfig, the feature settings it was trained with,
and `meta`: training data and metrics) and `model.safetensors` (network weights, the basis `basis`
(K, R, 3), the landmark indices `region` (R,), and `silence_code` (K,), the net's output for silence,
which is subtracted so that silence is exactly zero).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from a2pcli import features
from a2pcli.errors import InputError, ModelError
from a2pcli.landmarks import LOWER_LIP_INNER, N_LANDMARKS, UPPER_LIP_INNER
from a2pcli.modelfolder import (CONFIG_FILE, WEIGHTS_FILE, check_settings, model_file_error, read_model_config,
                                read_model_tensors, resolve_model_folder, write_model_folder)

MODEL_NAME = "audio2motion"  # the shipped model in the registry
FORMAT = "a2p.audio2motion"
FORMAT_VERSION = 1
INPUT_STRIDE = 2  # the input conv halves the 100 Hz feature rate
CODE_RATE = features.FRAME_RATE / INPUT_STRIDE  # 50 codes a second
CHUNK_CODES = 3000  # codes computed per network call (60 s): bounded memory for any length
RNN_CONTEXT_CODES = 50  # the GRU's working context each side (1 s), see A2MConfig.context_codes
VERIFY_HINT = "run `a2p models verify` (registry models), or re-export the model folder with `a2p train audio2motion`"
_KIND = "audio2motion"  # names the model in its errors
# lower-face region: landmarks whose y in the reference face (face units, y down) is at or below
# REGION_Y_FULL move freely; between REGION_Y_START (the nose tip) and REGION_Y_FULL (the base of the
# nose) their motion fades in linearly; above it they do not move.
REGION_Y_START, REGION_Y_FULL = 0.06, 0.16
_FEATURE_KEYS = ("SAMPLE_RATE", "WIN_LENGTH", "HOP_LENGTH", "N_FFT", "N_MELS", "F_MIN", "F_MAX", "POWER_FLOOR",
                 "LEVEL_PERCENTILE", "SPEECH_RANGE_DB", "FLOOR_DB", "SILENCE_DBFS", "FEATURE_SCALE")


def feature_settings() -> dict:
    """The feature constants a model is trained with (saved in its config, checked when loading)."""
    return {k.lower(): getattr(features, k) for k in _FEATURE_KEYS}


@dataclass(frozen=True)
class A2MConfig:
    """The network's shape: these are its constructor arguments, saved as config.json's "model"."""

    n_mels: int = features.N_MELS
    channels: int = 128
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)
    n_codes: int = 16
    n_region: int = 0  # landmarks in the lower-face region (set from the data when training)
    dropout: float = 0.1
    output_gain: float = 1.0  # codes are multiplied by this (spread calibration)
    gate_quiet_db: float = 40.0  # pause gate: frames this far below the speech level are quiet (0: off)
    gate_hold_s: float = 0.2  # speech activity extends this long on both sides (anticipation and release)
    gate_ramp_s: float = 0.1  # the gate fades over this long
    rnn: int = 0  # hidden size (each direction) of a bidirectional GRU over the conv features (0: none)

    @property
    def context_codes(self) -> int:
        """How many 50 Hz code frames each side one output sees (the receptive field's half-width). With
        the GRU the receptive field is unbounded; RNN_CONTEXT_CODES more are taken as its working context
        (training-crop margins, chunk overlap at inference)."""
        return 1 + sum(d * (self.kernel - 1) // 2 for d in self.dilations) + (RNN_CONTEXT_CODES if self.rnn else 0)

    @staticmethod
    def from_dict(d: dict) -> A2MConfig:
        d = dict(d)
        d["dilations"] = tuple(d.get("dilations", A2MConfig.dilations))
        known = set(A2MConfig.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown config keys {sorted(extra)}")
        return A2MConfig(**d)


def region_weights(reference: np.ndarray) -> np.ndarray:
    """reference: (478, 3) face units -> (478,) weight in [0, 1] of each landmark's motion."""
    y = reference[:, 1]
    return np.clip((y - REGION_Y_START) / (REGION_Y_FULL - REGION_Y_START), 0.0, 1.0).astype(np.float32)


# --- the network ------------------------------------------------------------------------------------


def build_network(cfg: A2MConfig):
    """The torch module for `cfg` (torch imported here, not at import time)."""
    import torch
    from torch import nn

    class ChannelNorm(nn.Module):
        """LayerNorm over channels of each frame: x (B, C, T). Frames stay independent, so chunked
        inference gives the same result as one pass."""

        def __init__(self, c: int):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)

    class Block(nn.Module):
        def __init__(self, c: int, k: int, d: int, p: float):
            super().__init__()
            self.norm = ChannelNorm(c)
            self.conv = nn.Conv1d(c, c, k, dilation=d, padding=d * (k - 1) // 2)
            self.act = nn.GELU()
            self.proj = nn.Conv1d(c, c, 1)
            self.drop = nn.Dropout(p)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.drop(self.proj(self.act(self.conv(self.norm(x)))))

    class Recurrent(nn.Module):
        """A residual bidirectional GRU over the frames: x (B, C, T) -> (B, C, T)."""

        def __init__(self, c: int, h: int, p: float):
            super().__init__()
            self.norm = nn.LayerNorm(c)
            self.gru = nn.GRU(c, h, batch_first=True, bidirectional=True)
            self.proj = nn.Linear(2 * h, c)
            self.drop = nn.Dropout(p)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.gru(self.norm(x.transpose(1, 2)))
            return x + self.drop(self.proj(y)).transpose(1, 2)

    class A2MNet(nn.Module):
        """x: (B, n_mels, T100) normalised features -> (B, n_codes, ceil(T100 / 2)) codes at 50 Hz."""

        def __init__(self, c: A2MConfig):
            super().__init__()
            self.inp = nn.Conv1d(c.n_mels, c.channels, 5, stride=INPUT_STRIDE, padding=2)
            self.blocks = nn.Sequential(*[Block(c.channels, c.kernel, d, c.dropout) for d in c.dilations])
            self.rnn = Recurrent(c.channels, c.rnn, c.dropout) if c.rnn else None
            self.norm = ChannelNorm(c.channels)
            self.out = nn.Conv1d(c.channels, c.n_codes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.blocks(self.inp(x))
            if self.rnn is not None:
                h = self.rnn(h)
            return self.out(self.norm(h))

    return A2MNet(cfg)


def n_codes_for(n_feature_frames: int) -> int:
    """50 Hz code frames for `n_feature_frames` 100 Hz feature frames (code m sits on feature 2m)."""
    return (int(n_feature_frames) + INPUT_STRIDE - 1) // INPUT_STRIDE


def run_network(net, feats: np.ndarray, cfg: A2MConfig, device: str = "cpu") -> np.ndarray:
    """feats: (T100, n_mels) normalised features -> (ceil(T100 / 2), n_codes) float32 raw codes.

    The features are padded with silence (features.FLOOR) on both sides and cut into chunks of
    CHUNK_CODES codes that overlap by the receptive field, so memory is bounded for any length."""
    import torch

    n_out = n_codes_for(len(feats))
    m = cfg.context_codes + 2  # margin, in codes, beyond the receptive field
    pad = INPUT_STRIDE * m
    padded = np.full((len(feats) + 2 * pad + INPUT_STRIDE, cfg.n_mels), features.FLOOR, np.float32)
    padded[pad : pad + len(feats)] = feats
    out = np.empty((n_out, cfg.n_codes), np.float32)
    with torch.inference_mode():
        for s in range(0, n_out, CHUNK_CODES):
            e = min(n_out, s + CHUNK_CODES)
            a, b = INPUT_STRIDE * s, min(len(padded), INPUT_STRIDE * (e + 2 * m))
            x = torch.from_numpy(np.ascontiguousarray(padded[a:b].T))[None].to(device)
            y = net(x)[0].T.float().cpu().numpy()
            out[s:e] = y[m : m + e - s]
    return out


def pause_gate(logmel: np.ndarray, cfg: A2MConfig) -> np.ndarray:
    """logmel: (T100, n_mels) from features.log_mel -> (ceil(T100 / 2),) float32 in [0, 1]: 0 inside pauses
    (frames gate_quiet_db below the speech level) longer than about 2 * gate_hold_s, so that the mouth closes;
    1 in speech and around it. All 1 when the gate is off, all 0 for a silent input."""
    n = n_codes_for(len(logmel))
    if not cfg.gate_quiet_db or n == 0:
        return np.ones(n, np.float32)
    level = features.frame_level_db(logmel)
    speech_level = float(np.percentile(level, features.LEVEL_PERCENTILE))
    if speech_level < features.SILENCE_DBFS:
        return np.zeros(n, np.float32)
    active = level > speech_level - cfg.gate_quiet_db
    if len(active) % INPUT_STRIDE:
        active = np.append(active, False)
    active = active.reshape(-1, INPUT_STRIDE).any(axis=1)[:n].astype(np.float32)
    hold = int(round(cfg.gate_hold_s * CODE_RATE))
    if hold:
        active = np.convolve(active, np.ones(2 * hold + 1), "same") > 0
    ramp = 2 * int(round(cfg.gate_ramp_s * CODE_RATE / 2)) + 1  # odd: the fade stays centred
    kernel = np.ones(ramp) / ramp
    padded = np.concatenate([np.zeros(ramp), active.astype(np.float32), np.zeros(ramp)])
    return np.clip(np.convolve(padded, kernel, "same")[ramp:-ramp], 0.0, 1.0).astype(np.float32)


def resample_codes(codes: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """codes: (T50, K) at CODE_RATE -> (n_frames, K) at the frame times i / fps (linear, ends held)."""
    if n_frames == 0:
        return np.zeros((0, codes.shape[1]), np.float32)
    if len(codes) == 0:
        return np.zeros((n_frames, codes.shape[1]), np.float32)
    pos = np.arange(n_frames) / float(fps) * CODE_RATE
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(codes) - 1)
    i1 = np.minimum(i0 + 1, len(codes) - 1)
    w = np.clip(pos - i0, 0.0, 1.0)[:, None].astype(np.float32)
    return ((1 - w) * codes[i0] + w * codes[i1]).astype(np.float32)


# --- the model --------------------------------------------------------------------------------------


@dataclass
class Audio2Motion:
    """A loaded model. `config`: its A2MConfig; `meta`: training data summary and metrics."""

    config: A2MConfig
    net: object  # the torch module, in eval mode
    basis: np.ndarray  # (K, R, 3) float32 face units per unit code
    region: np.ndarray  # (R,) int64 landmark indices
    silence_code: np.ndarray  # (K,) the raw net output for silence
    meta: dict = field(default_factory=dict)
    device: str = "cpu"
    path: Path | None = None

    def predict_codes(self, audio: np.ndarray, logmel: np.ndarray | None = None) -> np.ndarray:
        """audio: (N,) float32 16 kHz mono -> (ceil((N // 160 + 1) / 2), K) codes at 50 Hz, silence = 0.
        `logmel`: features.log_mel(audio) when the caller has it already."""
        return self.codes_from_logmel(features.log_mel(audio) if logmel is None else logmel)

    def codes_from_logmel(self, logmel: np.ndarray) -> np.ndarray:
        """logmel: (T100, n_mels) from features.log_mel -> (ceil(T100 / 2), K) codes: the net's output on the
        normalised features minus its output for silence, times the output gain, times the pause gate."""
        raw = run_network(self.net, features.normalise(logmel), self.config, self.device)
        return (raw - self.silence_code) * self.config.output_gain * pause_gate(logmel, self.config)[:, None]

    def expand(self, codes: np.ndarray) -> np.ndarray:
        """codes: (T, K) -> (T, 478, 3) float32 expression deltas, zero outside the region."""
        out = np.zeros((len(codes), N_LANDMARKS, 3), np.float32)
        out[:, self.region] = np.einsum("tk,krc->trc", codes, self.basis)
        return out

    def opening_shape(self) -> np.ndarray:
        """(478, 3) float32: the expression delta that parts the inner lips (upper and lower lip middle) by
        one face unit, as the least (minimum-norm) combination of the basis does; zero outside the region."""
        pos = {int(r): i for i, r in enumerate(self.region)}
        if UPPER_LIP_INNER not in pos or LOWER_LIP_INNER not in pos:
            return np.zeros((N_LANDMARKS, 3), np.float32)
        per_code = self.basis[:, pos[LOWER_LIP_INNER], 1] - self.basis[:, pos[UPPER_LIP_INNER], 1]  # (K,)
        norm2 = float(per_code @ per_code)
        if norm2 < 1e-12:
            return np.zeros((N_LANDMARKS, 3), np.float32)
        return self.expand((per_code / norm2)[None].astype(np.float32))[0]

    def predict(self, audio: np.ndarray, fps: float, n_frames: int | None = None,
                logmel: np.ndarray | None = None) -> np.ndarray:
        """audio: (N,) float32 mono, 16 kHz -> (T, 478, 3) float32 expression deltas, one per video frame
        at `fps` (frame i at time i / fps), T = n_frames or round(N / 16000 * fps). Deterministic. `logmel`:
        features.log_mel(audio) when the caller has it already."""
        audio = _check_audio(audio)
        fps = _check_fps(fps)
        if n_frames is None:
            n_frames = int(round(len(audio) / features.SAMPLE_RATE * fps))
        if int(n_frames) < 0:
            raise InputError(f"must be >= 0, got {n_frames}", subject="n_frames")
        codes = self.predict_codes(audio, logmel) if len(audio) else np.zeros((0, self.config.n_codes), np.float32)
        return self.expand(resample_codes(codes, fps, int(n_frames)))


def _check_audio(audio) -> np.ndarray:
    try:
        return features.check_audio(audio)
    except ValueError as exc:
        raise InputError(str(exc), subject="audio", remedy="pass 16 kHz mono float samples (a2pcli.audio.load_audio)")


def _check_fps(fps) -> float:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise InputError(f"must be a number, got {fps!r}", subject="fps") from None
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"must be positive, got {fps}", subject="fps")
    return fps


# --- saving and loading -----------------------------------------------------------------------------


def save_model(folder: Path, cfg: A2MConfig, state: dict, basis: np.ndarray, region: np.ndarray,
               silence_code: np.ndarray, meta: dict) -> None:
    """Write config.json and model.safetensors into `folder` (each atomically). `state`: the net's
    state_dict."""
    import torch

    tensors = {f"net.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}
    tensors["basis"] = torch.from_numpy(np.ascontiguousarray(basis, np.float32))
    tensors["region"] = torch.from_numpy(np.ascontiguousarray(region, np.int64))
    tensors["silence_code"] = torch.from_numpy(np.ascontiguousarray(silence_code, np.float32))
    write_model_folder(folder, FORMAT, FORMAT_VERSION, tensors, {
        "model": asdict(cfg), "features": feature_settings(), "code_rate": CODE_RATE,
        "region": {"y_start": REGION_Y_START, "y_full": REGION_Y_FULL}, "meta": meta})


def _corrupt(path: Path, why: str) -> ModelError:
    return model_file_error(path, _KIND, why, VERIFY_HINT)


def read_config(folder: Path) -> tuple[A2MConfig, dict]:
    """folder/config.json -> (A2MConfig, the whole document)."""
    cfg, doc = read_model_config(folder, FORMAT, FORMAT_VERSION, A2MConfig.from_dict, _KIND, VERIFY_HINT)
    check_settings(doc, folder, "features", feature_settings(), "speech-feature")
    return cfg, doc


def load_folder(folder: Path, device: str = "cpu") -> Audio2Motion:
    """A model folder (config.json + model.safetensors) -> Audio2Motion, loaded strictly."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("not a model folder", subject=str(folder),
                         remedy="give a folder written by `a2p train audio2motion`, or the name audio2motion")
    cfg, doc = read_config(folder)
    wpath = folder / WEIGHTS_FILE
    tensors = read_model_tensors(wpath, _KIND, VERIFY_HINT)
    try:
        basis, region, silence = tensors.pop("basis"), tensors.pop("region"), tensors.pop("silence_code")
        state = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
        if len(state) != len(tensors):
            raise ValueError(f"unexpected tensors {sorted(set(tensors) - {'net.' + k for k in state})[:3]}")
        net = build_network(cfg)
        net.load_state_dict(state, strict=True)
        basis, region, silence = basis.float().numpy(), region.long().numpy(), silence.float().numpy()
        if basis.shape != (cfg.n_codes, len(region), 3) or silence.shape != (cfg.n_codes,):
            raise ValueError(f"basis {tuple(basis.shape)} / silence {tuple(silence.shape)} do not fit the config")
        if len(region) != cfg.n_region or region.min() < 0 or region.max() >= N_LANDMARKS:
            raise ValueError("landmark region does not fit the config")
        if not all(np.isfinite(a).all() for a in (basis, silence)):
            raise ValueError("non-finite values")
    except (KeyError, RuntimeError, ValueError) as exc:
        raise _corrupt(wpath, f"does not match {CONFIG_FILE}: {str(exc)[:160]}") from exc
    net.eval().to(device)
    return Audio2Motion(cfg, net, basis, region, silence, doc.get("meta", {}), device, folder)


def load_model(name_or_path: str | Path | None = None, device: str = "cpu") -> Audio2Motion:
    """None or "audio2motion": the shipped model (files checked against the registry's sha256); else a
    folder written by `a2p train audio2motion`. ModelError naming the file when one is missing or corrupt."""
    return load_folder(resolve_model_folder(name_or_path, MODEL_NAME), device)
