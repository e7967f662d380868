"""Speech -> head motion: the `audio2pose` model.

    load_model(name_or_path=None, device="cpu") -> Audio2PoseModel
    Audio2PoseModel.generate(audio, fps, n_frames=None, seed=0) -> (T, N_POSE) float32 head motion

`audio`: (N,) float32 mono at 16 kHz. The output, one row per video frame (frame i at time i / fps), is
[yaw, pitch, roll] in degrees (R = Ry(yaw) Rx(pitch) Rz(roll), as a2pcli.headpose) and [x, y] translation
in face units (the outer eye corners 1 apart; image axes, y down), RELATIVE to the portrait's own pose:
about zero-mean over a few seconds, so the portrait keeps its pose on average.

Stochastic: several plausible motions fit the same speech; `seed` (mixed with the speech, noise_seed) picks
one. The same seed and speech give the same motion (the noise comes from numpy's seeded generator, the same on
every machine; the network's float32 arithmetic may differ in the last bits between CPUs).

How: a conditional flow-matching model (rectified flow). Speech features at 100 Hz (normalised log-mel,
a2pcli.features, averaged into coarser bands, and loudness / pitch / voicing, a2pcli.prosody) -> an audio
encoder (two strided convs to POSE_RATE, dilated residual blocks that see about +-0.7 s) -> a per-frame
condition. A denoiser (dilated residual blocks over time, about +-2.5 s each side, modulated by the flow
time, the condition added in every block) turns Gaussian noise (T, N_POSE) into a motion by integrating its
velocity field over `steps` midpoint steps, with classifier-free guidance on the speech (`guidance`: the
velocity is pushed away from the one the denoiser predicts without speech, which ties the motion more
firmly to the speech). Every layer is a convolution with a finite receptive field and the noise is
stationary, so the motion cannot drift: 10 minutes of speech are one pass (in chunks with exact
overlaps), with no state carried along. Memory: the features are made a chunk at a time from the log-mel (held
whole: 19 MB for 10 minutes, computed once for audio2motion and this model in audio2video), the condition held is
the audio encoder's output (C channels: 3 MB for 10 minutes), every other array a few MB for any length.

A model folder holds `config.json` (A2PConfig, the feature settings, `meta`: training data and metrics)
and `model.safetensors` (the network's weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from a2pcli import features, prosody
from a2pcli.errors import InputError, ModelError
from a2pcli.modelfolder import (CONFIG_FILE, WEIGHTS_FILE, check_settings, load_weights_strictly, read_model_config,
                                read_model_tensors, resolve_model_folder, write_model_folder)

MODEL_NAME = "audio2pose"  # the shipped model in the registry
FORMAT = "a2p.audio2pose"
FORMAT_VERSION = 1
POSE_RATE = 25.0  # Hz: the rate the model works at (features.FRAME_RATE / INPUT_STRIDE)
INPUT_STRIDE = int(round(features.FRAME_RATE / POSE_RATE))  # feature frames per pose frame (4)
N_POSE = 5  # yaw, pitch, roll (degrees), x, y (face units)
POSE_NAMES = ("yaw", "pitch", "roll", "x", "y")
N_INPUT = features.N_MELS + prosody.N_PROSODY
CHUNK_FRAMES = 2000  # pose frames per denoiser call (80 s): bounded memory for any length
ENCODE_FRAMES = 1000  # pose frames per audio encoder call (40 s): its input rows are made a chunk at a time
TIME_FREQS = 16  # sinusoidal embedding of the flow time
VERIFY_HINT = "run `a2p models verify` (registry models), or re-export the model folder with `a2p train audio2pose`"
_KIND = "audio2pose"  # names the model in its errors
_FEATURE_KEYS = ("SAMPLE_RATE", "WIN_LENGTH", "HOP_LENGTH", "N_FFT", "N_MELS", "F_MIN", "F_MAX", "POWER_FLOOR",
                 "LEVEL_PERCENTILE", "SPEECH_RANGE_DB", "FLOOR_DB", "SILENCE_DBFS", "FEATURE_SCALE")
_PROSODY_KEYS = ("LOUDNESS_UNIT_DB", "LOUDNESS_FLOOR", "F0_MIN", "F0_MAX", "PITCH_RATE", "PITCH_STEP",
                 "PITCH_WINDOW", "VOICED", "OCTAVE_TOLERANCE", "PITCH_MEDIAN")


def feature_settings() -> dict:
    """The feature and prosody constants a model is trained with (saved in its config, checked at load)."""
    out = {k.lower(): getattr(features, k) for k in _FEATURE_KEYS}
    out.update({f"prosody_{k.lower()}": getattr(prosody, k) for k in _PROSODY_KEYS})
    return out


@dataclass(frozen=True)
class A2PConfig:
    """The network's shape and sampling: its constructor arguments, saved as config.json's "model"."""

    n_input: int = N_INPUT
    mel_pool: int = 8  # neighbouring mel bands averaged in groups of this many (coarser spectra generalise better)
    channels: int = 48
    kernel: int = 3
    audio_dilations: tuple[int, ...] = (1, 2, 4, 8)  # audio encoder blocks, at POSE_RATE
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4)  # denoiser blocks, at POSE_RATE
    n_pose: int = N_POSE
    pose_std: tuple[float, ...] = (4.0, 3.0, 2.5, 0.1, 0.08)  # per-channel scale of the motion (set from data)
    steps: int = 4  # midpoint steps of the sampler (two network calls each; 8 measure the same)
    guidance: float = 4.0  # classifier-free guidance on the speech (1: none)
    smooth_s: float = 0.04  # Gaussian smoothing of the sampled motion, seconds (sigma; 0: off)
    limit_deg: tuple[float, ...] = (20.0, 15.0, 15.0)  # yaw, pitch, roll never go past these (soft_limit)
    dropout: float = 0.1  # in every residual block, while training

    @property
    def context_frames(self) -> int:
        """Pose frames each side that one output frame depends on (encoder + denoiser receptive fields)."""
        half = lambda ds: sum(d * (self.kernel - 1) // 2 for d in ds)  # noqa: E731
        return 2 + half(self.audio_dilations) + half(self.dilations)

    @staticmethod
    def from_dict(d: dict) -> A2PConfig:
        d = dict(d)
        for k in ("audio_dilations", "dilations", "pose_std", "limit_deg"):
            if k in d:
                d[k] = tuple(d[k])
        extra = set(d) - set(A2PConfig.__dataclass_fields__)
        if extra:
            raise ValueError(f"unknown config keys {sorted(extra)}")
        cfg = A2PConfig(**d)
        if len(cfg.pose_std) != cfg.n_pose or min(cfg.pose_std) <= 0 or cfg.steps < 1:
            raise ValueError("pose_std must hold n_pose positive values and steps must be >= 1")
        if len(cfg.limit_deg) != 3 or min(cfg.limit_deg) <= 0:
            raise ValueError("limit_deg must hold 3 positive values")
        if cfg.mel_pool < 1 or features.N_MELS % cfg.mel_pool:
            raise ValueError(f"mel_pool must divide {features.N_MELS}")
        return cfg


# --- the network ------------------------------------------------------------------------------------


def build_network(cfg: A2PConfig):
    """The torch module for `cfg` (torch imported here, not at import time)."""
    import math

    import torch
    from torch import nn

    class ChannelNorm(nn.Module):
        """LayerNorm over the channels of each frame, x (B, C, T): frames stay independent, so chunked
        inference equals one pass."""

        def __init__(self, c: int):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)

    class Block(nn.Module):
        """Pre-norm residual dilated conv. In the denoiser the normalised input is scaled and shifted by
        `film` (B, 2C) from the flow time and the speech condition `cond` (B, C, T) is added to it."""

        def __init__(self, c: int, k: int, d: int, p: float):
            super().__init__()
            self.norm = ChannelNorm(c)
            self.conv = nn.Conv1d(c, c, k, dilation=d, padding=d * (k - 1) // 2)
            self.act = nn.GELU()
            self.drop = nn.Dropout(p)
            self.proj = nn.Conv1d(c, c, 1)

        def forward(self, x: torch.Tensor, film: torch.Tensor | None = None,
                    cond: torch.Tensor | None = None) -> torch.Tensor:
            h = self.norm(x)
            if film is not None:
                scale, shift = film.chunk(2, dim=1)
                h = h * (1 + scale[:, :, None]) + shift[:, :, None]
            if cond is not None:
                h = h + cond
            return x + self.proj(self.drop(self.act(self.conv(h))))

    class AudioEncoder(nn.Module):
        """x: (B, n_input, T100) -> (B, C, ceil(T100 / 4)) condition at POSE_RATE. The mel bands are first
        averaged in groups of `mel_pool`."""

        def __init__(self, c: A2PConfig):
            super().__init__()
            self.pool = c.mel_pool
            n_in = features.N_MELS // c.mel_pool + c.n_input - features.N_MELS
            self.inp = nn.Sequential(nn.Conv1d(n_in, c.channels, 5, stride=2, padding=2), nn.GELU(),
                                     nn.Conv1d(c.channels, c.channels, 5, stride=2, padding=2))
            self.blocks = nn.ModuleList([Block(c.channels, c.kernel, d, c.dropout) for d in c.audio_dilations])
            self.norm = ChannelNorm(c.channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.pool > 1:
                mels = x[:, : features.N_MELS]
                mels = mels.reshape(x.shape[0], features.N_MELS // self.pool, self.pool, x.shape[2]).mean(2)
                x = torch.cat([mels, x[:, features.N_MELS :]], dim=1)
            h = self.inp(x)
            for b in self.blocks:
                h = b(h)
            return self.norm(h)

    class Denoiser(nn.Module):
        """x_t: (B, n_pose, T), the speech condition (B, C, T) made ready by `prepare`, t: (B,) in [0, 1]
        -> velocity (B, n_pose, T). The condition enters every block (a per-block projection, computed once
        per sampling since it does not depend on t)."""

        def __init__(self, c: A2PConfig):
            super().__init__()
            self.n_blocks = len(c.dilations)
            self.inp = nn.Conv1d(c.n_pose, c.channels, 1)
            self.cond = nn.Conv1d(c.channels, c.channels * self.n_blocks, 1)
            self.time = nn.Sequential(nn.Linear(2 * TIME_FREQS, c.channels), nn.GELU(),
                                      nn.Linear(c.channels, 2 * c.channels * self.n_blocks))
            self.blocks = nn.ModuleList([Block(c.channels, c.kernel, d, c.dropout) for d in c.dilations])
            self.norm = ChannelNorm(c.channels)
            self.out = nn.Conv1d(c.channels, c.n_pose, 1)
            freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), TIME_FREQS))
            self.register_buffer("freqs", freqs, persistent=False)

        def prepare(self, cond: torch.Tensor) -> torch.Tensor:
            """(B, C, T) encoder output -> (B, C * blocks, T) per-block terms (frame by frame)."""
            return self.cond(cond)

        def forward(self, x: torch.Tensor, cond, t: torch.Tensor) -> torch.Tensor:
            """cond: (B, C * blocks, T) from prepare, or the blocks' parts of it, (B, C, T) each, one after
            another (an iterable: inference makes each only when its block runs, block_conds)."""
            arg = t[:, None] * self.freqs[None]
            films = self.time(torch.cat([arg.sin(), arg.cos()], dim=1)).chunk(self.n_blocks, dim=1)
            conds = cond.chunk(self.n_blocks, dim=1) if isinstance(cond, torch.Tensor) else cond
            h = self.inp(x)
            for b, f, c_ in zip(self.blocks, films, conds):
                h = b(h, f, c_)
            return self.out(self.norm(h))

    class A2PNet(nn.Module):
        def __init__(self, c: A2PConfig):
            super().__init__()
            self.audio = AudioEncoder(c)
            self.denoiser = Denoiser(c)

        def forward(self, x: torch.Tensor, speech: torch.Tensor, t: torch.Tensor, keep: torch.Tensor,
                    margin: int) -> torch.Tensor:
            """Training's one call: the velocity (B, n_pose, L) at x_t (B, n_pose, L) and times t (B,), from
            speech (B, n_input, 4 (L + 2 margin)) with `margin` pose frames of context each side, its condition
            zeroed for the crops where keep (B,) is 0. Inference calls the parts (encode_speech, sample)."""
            n = x.shape[2]
            cond = self.audio(speech)[:, :, margin : margin + n] * keep[:, None, None]
            return self.denoiser(x, self.denoiser.prepare(cond), t)

    return A2PNet(cfg)


def n_pose_frames(n_feature_frames: int) -> int:
    """Pose frames for `n_feature_frames` 100 Hz feature frames (pose frame j sits on feature 4j)."""
    return (int(n_feature_frames) + INPUT_STRIDE - 1) // INPUT_STRIDE


class SpeechInputs:
    """The network's inputs for one speech, (T100, N_INPUT) float32 normalised log-mel and prosody, made a range
    of frames at a time (`rows`), so that the whole array is never built: what is held is the log-mel, its
    per-utterance statistic (features.speech_shape) and the prosody (T100, N_PROSODY).

    audio: (N,) float32 16 kHz mono; logmel: its features.log_mel when the caller has it already."""

    def __init__(self, audio: np.ndarray, logmel: np.ndarray | None = None):
        self.logmel = features.log_mel(audio) if logmel is None else logmel
        self.shape = features.speech_shape(self.logmel) if len(self.logmel) else None
        self.prosody = prosody.prosody(audio, self.logmel)

    def __len__(self) -> int:
        return len(self.logmel)

    def rows(self, a: int, b: int) -> np.ndarray:
        """(b - a, N_INPUT) float32: frames a..b-1, a frame of silence (SILENT_INPUT) for those past the end."""
        out = np.repeat(SILENT_INPUT[None], b - a, 0)
        e = min(b, len(self))
        if e > a:
            out[: e - a, : features.N_MELS] = features.normalise_with(self.logmel[a:e], self.shape)
            out[: e - a, features.N_MELS :] = self.prosody[a:e]
        return out


class _ArrayInputs:
    """SpeechInputs' `rows` over inputs already made whole, (T100, N_INPUT)."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def rows(self, a: int, b: int) -> np.ndarray:
        part = self.inputs[a:b]
        if len(part) == b - a:
            return part
        return np.concatenate([part, np.repeat(SILENT_INPUT[None], b - a - len(part), 0)])


SILENT_INPUT = np.concatenate([np.full(features.N_MELS, features.FLOOR, np.float32),
                               np.array([prosody.LOUDNESS_FLOOR, 0.0, 0.0], np.float32)])  # a frame of silence


def speech_inputs(audio: np.ndarray, logmel: np.ndarray | None = None) -> np.ndarray:
    """audio: (N,) float32 16 kHz mono -> (T100, N_INPUT) float32: normalised log-mel and prosody, whole."""
    inputs = SpeechInputs(audio, logmel)
    return inputs.rows(0, len(inputs))


def _chunks(n: int, margin: int, size: int | None = None):
    """(start, stop) of `size`-long (default CHUNK_FRAMES) pieces of n frames, and their windows widened by margin."""
    size = size or CHUNK_FRAMES
    for s in range(0, n, size):
        e = min(n, s + size)
        yield s, e, max(0, s - margin), min(n, e + margin)


def encode_speech(net, inputs: SpeechInputs | np.ndarray, cfg: A2PConfig, device: str = "cpu"):
    """inputs: (T100, N_INPUT) (SpeechInputs, or the array) -> the speech condition, the audio encoder's output
    (1, C, T) float32 on `device`, T = n_pose_frames(T100): the denoiser's per-block terms (Denoiser.prepare, C *
    blocks channels) are made from it a chunk and a block at a time (block_conds), so what is held is 1/blocks of
    them. Chunked with overlaps wider than the encoder's reach, so the result equals one pass over the whole input;
    the input rows are made a chunk at a time."""
    import torch

    if isinstance(inputs, np.ndarray):
        inputs = _ArrayInputs(inputs)
    n = n_pose_frames(len(inputs))
    margin = 4 + sum(d * (cfg.kernel - 1) // 2 for d in cfg.audio_dilations)
    out = torch.empty((1, cfg.channels, n), device=device)
    for s, e, a, b in _chunks(n, margin, min(ENCODE_FRAMES, CHUNK_FRAMES)):
        x = inputs.rows(a * INPUT_STRIDE, b * INPUT_STRIDE)
        xa = torch.from_numpy(np.ascontiguousarray(x.T))[None].to(device)
        out[:, :, s:e] = net.audio(xa)[:, :, s - a : e - a]
    return out


def block_conds(denoiser, cond, null=None):
    """Denoiser.prepare(cond) for cond (1, C, L), block by block: (1, C, L) each, made when its block runs (one
    block's part held at a time, not all of them); with `null` (the prepared zero condition, (1, C * blocks, 1)),
    (2, C, L): the speech's part and the no-speech part."""
    import torch
    import torch.nn.functional as F

    w, bias = denoiser.cond.weight, denoiser.cond.bias  # the 1x1 conv of prepare, its outputs block after block
    c = w.shape[0] // denoiser.n_blocks
    for i in range(denoiser.n_blocks):
        part = F.conv1d(cond, w[i * c : (i + 1) * c], bias[i * c : (i + 1) * c])
        yield part if null is None else torch.cat([part, null[:, i * c : (i + 1) * c].expand(-1, -1, part.shape[2])])


def velocity(net, x, cond, t: float, cfg: A2PConfig, null=None):
    """The denoiser over the whole sequence x (1, n_pose, T) at flow time t, chunked with exact overlaps, given
    the speech condition `cond` (1, C, T) from encode_speech (made ready a chunk and a block at a time, block_conds);
    with guidance, extrapolated away from the prediction without speech (`null`: the prepared zero
    condition, (1, C * blocks, 1))."""
    import torch

    n = x.shape[2]
    margin = sum(d * (cfg.kernel - 1) // 2 for d in cfg.dilations) + 1
    out = torch.empty_like(x)
    tt = torch.full((1,), float(t), device=x.device)
    for s, e, a, b in _chunks(n, margin):
        conds = block_conds(net.denoiser, cond[:, :, a:b], null)
        if null is None:
            v = net.denoiser(x[:, :, a:b], conds, tt)
        else:  # with and without the speech in one batch
            both = net.denoiser(x[:, :, a:b].expand(2, -1, -1), conds, tt.expand(2))
            v = both[1:] + cfg.guidance * (both[:1] - both[1:])
        out[:, :, s:e] = v[:, :, s - a : e - a]
    return out


def sample(net, cond, noise: np.ndarray, cfg: A2PConfig):
    """Integrate the flow from noise (T, n_pose) at t=0 to a motion at t=1 with cfg.steps midpoint steps
    -> (T, n_pose) float32 in normalised units."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(noise.T, np.float32))[None].to(cond.device)
    h = 1.0 / cfg.steps
    with torch.inference_mode():
        null = None
        if cfg.guidance != 1.0:
            null = net.denoiser.prepare(torch.zeros((1, cfg.channels, 1), device=cond.device))
        for i in range(cfg.steps):
            t = i * h
            mid = x + 0.5 * h * velocity(net, x, cond, t, cfg, null)
            x = x + h * velocity(net, mid, cond, t + 0.5 * h, cfg, null)
    return x[0].T.float().cpu().numpy()


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """(T, C) smoothed along T by a Gaussian of `sigma` frames (ends held)."""
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(r, r), (0, 0)], mode="edge")
    return np.stack([np.convolve(pad[:, c], k, mode="valid") for c in range(x.shape[1])], axis=1).astype(np.float32)


KNEE = 0.6  # soft_limit leaves angles below this share of the limit unchanged


def soft_limit(x: np.ndarray, limit: float) -> np.ndarray:
    """Angles (degrees) unchanged up to KNEE * limit, then bent smoothly towards +-limit, never past it:
    the rare wide swing stays within what the warp renderer shows well."""
    knee = KNEE * limit
    a = np.abs(x)
    bent = knee + (limit - knee) * np.tanh((a - knee) / (limit - knee))
    return np.where(a > knee, np.sign(x) * bent, x).astype(np.float32)


def resample(motion: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(T, C) at POSE_RATE -> (n_frames, C) at the frame times i / fps (linear, ends held)."""
    if n_frames == 0 or len(motion) == 0:
        return np.zeros((n_frames, motion.shape[1]), np.float32)
    pos = np.arange(n_frames) / float(fps) * POSE_RATE
    src = np.arange(len(motion))
    return np.stack([np.interp(pos, src, motion[:, c]) for c in range(motion.shape[1])], axis=1).astype(np.float32)


# --- the model --------------------------------------------------------------------------------------


@dataclass
class Audio2PoseModel:
    """A loaded model. `config`: its A2PConfig; `meta`: training data summary and metrics."""

    config: A2PConfig
    net: object  # the torch module, in eval mode
    meta: dict = field(default_factory=dict)
    device: str = "cpu"
    path: Path | None = None

    def generate_normalised(self, inputs: SpeechInputs | np.ndarray, seed: int) -> np.ndarray:
        """inputs: (T100, N_INPUT) (SpeechInputs, or speech_inputs' array) -> (n_pose_frames(T100), n_pose) motion
        at POSE_RATE in normalised units, before smoothing."""
        return self.sample_normalised(self.condition(inputs), seed)

    def condition(self, inputs: SpeechInputs | np.ndarray):
        """inputs: (T100, N_INPUT) -> the speech condition (1, C, n_pose_frames(T100)) (encode_speech)."""
        import torch

        with torch.inference_mode():
            return encode_speech(self.net, inputs, self.config, self.device)

    def sample_normalised(self, cond, seed: int) -> np.ndarray:
        """The speech condition (1, C, T) -> (T, n_pose) motion at POSE_RATE in normalised units, before smoothing."""
        n = cond.shape[2]
        noise = np.random.default_rng(seed).standard_normal((n, self.config.n_pose)).astype(np.float32)
        if n == 0:
            return noise
        return sample(self.net, cond, noise, self.config)

    def from_normalised(self, x: np.ndarray) -> np.ndarray:
        """(T, n_pose) normalised -> degrees / face units, smoothed and limited (at POSE_RATE)."""
        out = gaussian_smooth(x * np.asarray(self.config.pose_std, np.float32)[None], self.config.smooth_s * POSE_RATE)
        for axis, limit in enumerate(self.config.limit_deg):
            out[:, axis] = soft_limit(out[:, axis], limit)
        return out

    def generate(self, audio: np.ndarray, fps: float, n_frames: int | None = None, seed: int = 0,
                 logmel: np.ndarray | None = None) -> np.ndarray:
        """audio: (N,) float32 mono, 16 kHz -> (T, N_POSE) float32 [yaw, pitch, roll (deg), x, y (face units)]
        relative to the portrait, one row per video frame at `fps` (T = n_frames or round(N / 16000 * fps)).
        The same audio, length and seed give the same motion. `logmel`: features.log_mel(audio) when the
        caller has it already."""
        audio = _check_audio(audio)
        fps = _check_fps(fps)
        if n_frames is None:
            n_frames = int(round(len(audio) / features.SAMPLE_RATE * fps))
        if int(n_frames) < 0:
            raise InputError(f"must be >= 0, got {n_frames}", subject="n_frames")
        seed = _check_seed(seed)
        if len(audio) == 0:
            return np.zeros((int(n_frames), self.config.n_pose), np.float32)
        cond = self.condition(SpeechInputs(audio, logmel))  # the features are dropped once encoded
        motion = self.from_normalised(self.sample_normalised(cond, noise_seed(seed, audio)))
        return resample(motion, fps, int(n_frames))


def noise_seed(seed: int, audio: np.ndarray) -> int:
    """The sampler's seed: --seed mixed with the speech's samples, so that one seed gives each speech its own
    motion (not the same choreography under every speech) and the same speech and seed the same motion."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(audio, np.float32)).digest()  # the samples' bytes, not copied
    return int.from_bytes(hashlib.sha256(digest + int(seed).to_bytes(8, "little")).digest()[:8], "little")


def _check_audio(audio) -> np.ndarray:
    try:
        return features.check_audio(audio)
    except ValueError as exc:
        raise InputError(str(exc), subject="audio", remedy="pass 16 kHz mono float samples (a2pcli.encode.load_audio)")


def _check_fps(fps) -> float:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise InputError(f"must be a number, got {fps!r}", subject="fps") from None
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"must be positive, got {fps}", subject="fps")
    return fps


def _check_seed(seed) -> int:
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise InputError(f"must be an integer, got {seed!r}", subject="seed") from None
    if seed < 0:
        raise InputError(f"must be >= 0, got {seed}", subject="seed")
    return seed


# --- saving and loading -----------------------------------------------------------------------------


def save_model(folder: Path, cfg: A2PConfig, state: dict, meta: dict) -> None:
    """Write config.json and model.safetensors into `folder` (each atomically). `state`: the net's state_dict."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    write_model_folder(folder, FORMAT, FORMAT_VERSION, tensors, {
        "model": asdict(cfg), "features": feature_settings(), "pose_rate": POSE_RATE, "pose": list(POSE_NAMES),
        "meta": meta})



def read_config(folder: Path) -> tuple[A2PConfig, dict]:
    """folder/config.json -> (A2PConfig, the whole document)."""
    cfg, doc = read_model_config(folder, FORMAT, FORMAT_VERSION, A2PConfig.from_dict, _KIND, VERIFY_HINT)
    check_settings(doc, folder, "features", feature_settings(), "speech-feature")
    return cfg, doc


def load_folder(folder: Path, device: str = "cpu") -> Audio2PoseModel:
    """A model folder (config.json + model.safetensors) -> Audio2PoseModel, loaded strictly."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("not a model folder", subject=str(folder),
                         remedy="give a folder written by `a2p train audio2pose`, or the name audio2pose")
    cfg, doc = read_config(folder)
    wpath = folder / WEIGHTS_FILE
    state = read_model_tensors(wpath, _KIND, VERIFY_HINT)
    net = load_weights_strictly(build_network(cfg), state, wpath, _KIND, VERIFY_HINT).to(device)
    return Audio2PoseModel(cfg, net, doc.get("meta", {}), device, folder)


def load_model(name_or_path: str | Path | None = None, device: str = "cpu") -> Audio2PoseModel:
    """None or "audio2pose": the shipped model (files checked against the registry's sha256); else a folder
    written by `a2p train audio2pose`. ModelError naming the file when one is missing or corrupt."""
    return load_folder(resolve_model_folder(name_or_path, MODEL_NAME), device)
