"""Speech features for audio2motion: log-mel spectra with per-utterance normalisation, numpy only.

    log_mel(audio)          audio: (N,) float32, 16 kHz mono -> (T, N_MELS) float32, natural log of mel power
    normalise(logmel)       (T, N_MELS) -> (T, N_MELS) float32, about unit scale, silence at FLOOR
    speech_features(audio)  both in one call (what the model eats)
    frame_level_db(logmel)  (T,) frame loudness in dB relative to a full-scale sine

Frame t is centred on sample t * HOP_LENGTH (the signal is zero-padded by half a window at both
ends), so T = N // HOP_LENGTH + 1 and frame t belongs to time t / FRAME_RATE seconds.

Normalisation, per utterance (what makes the model robust to loudness and recording differences):
  1. the speech level is the LEVEL_PERCENTILE-th percentile of the frame levels;
  2. frames within SPEECH_RANGE_DB of it count as speech; their mean log-mel spectrum (per band)
     is subtracted: this removes the gain and the channel's spectral tilt (microphone, room, codec);
  3. everything more than FLOOR_DB below that mean is clipped to the floor, so background noise
     under the floor and digital silence look the same; an utterance whose speech level is below
     SILENCE_DBFS is silence throughout (every feature at FLOOR).
The STFT runs in chunks of CHUNK_FRAMES frames, so memory stays bounded for any length (10 min of
audio: about 20 MB of features).
"""

from __future__ import annotations

import numpy as np

from a2pcli.audio import SAMPLE_RATE  # Hz, what the features read (a2p's audio loader's rate)

WIN_LENGTH = 400  # samples: 25 ms analysis window (Hann)
HOP_LENGTH = 160  # samples: 10 ms between frames
N_FFT = 512  # FFT size: the window zero-padded to the next power of two
N_MELS = 80
F_MIN, F_MAX = 55.0, 7600.0  # Hz: the mel bands span the speech band below Nyquist (8 kHz)
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH  # 100 feature frames a second
CHUNK_FRAMES = 6000  # STFT frames computed at a time (60 s of audio)

POWER_FLOOR = 1e-10  # mel power added before the log: -100 dB re full scale, below any real recording
LEVEL_PERCENTILE = 95  # the speech level: loud frames, robust to a few clicks
SPEECH_RANGE_DB = 30.0  # frames this close to the speech level shape the per-band mean
FLOOR_DB = 50.0  # features are clipped this far below the speech-frame mean of their band
SILENCE_DBFS = -60.0  # an utterance whose speech level is below this is silence
FEATURE_SCALE = 4.0  # natural-log units per feature unit: keeps features roughly in [-3, 1]
DB_PER_NEPER = 10.0 / np.log(10.0)  # 10 log10(p) = DB_PER_NEPER * ln(p)
FLOOR = -FLOOR_DB / DB_PER_NEPER / FEATURE_SCALE  # the value of silence in normalised features


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)  # HTK mel scale


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE,
                   fmin: float = F_MIN, fmax: float = F_MAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters with peak 1 (a sine at a band's centre
    keeps its power in that band)."""
    freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


_FB_CACHE: dict[tuple, np.ndarray] = {}


def _filterbank() -> np.ndarray:
    key = (N_MELS, N_FFT, SAMPLE_RATE, F_MIN, F_MAX)
    if key not in _FB_CACHE:
        _FB_CACHE[key] = mel_filterbank()
    return _FB_CACHE[key]


def _window() -> np.ndarray:
    """Hann window of WIN_LENGTH centred in N_FFT, scaled so that a full-scale sine has power 1."""
    w = np.zeros(N_FFT, np.float64)
    off = (N_FFT - WIN_LENGTH) // 2
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
    w[off : off + WIN_LENGTH] = hann / (hann.sum() / 2.0)
    return w


def n_frames(n_samples: int) -> int:
    """Feature frames for `n_samples` of audio."""
    return int(n_samples) // HOP_LENGTH + 1


def check_audio(audio: np.ndarray) -> np.ndarray:
    """(N,) float mono -> contiguous float32; ValueError for other shapes or non-finite samples."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("audio holds NaN or infinite samples")
    return audio


def log_mel(audio: np.ndarray) -> np.ndarray:
    """audio: (N,) float32 mono at SAMPLE_RATE -> (T, N_MELS) float32 ln(mel power + POWER_FLOOR)."""
    audio = check_audio(audio)
    total = n_frames(len(audio))
    half = N_FFT // 2
    fb, win = _filterbank(), _window()
    out = np.empty((total, N_MELS), np.float32)
    for f0 in range(0, total, CHUNK_FRAMES):
        f1 = min(total, f0 + CHUNK_FRAMES)
        a, b = f0 * HOP_LENGTH - half, (f1 - 1) * HOP_LENGTH + half  # samples this chunk needs
        seg = np.zeros(b - a, np.float32)
        lo, hi = max(a, 0), min(b, len(audio))
        if hi > lo:
            seg[lo - a : hi - a] = audio[lo:hi]
        frames = np.lib.stride_tricks.sliding_window_view(seg, N_FFT)[::HOP_LENGTH][: f1 - f0]
        spec = np.fft.rfft(frames * win, axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        out[f0:f1] = np.log(power @ fb.T + POWER_FLOOR)
    return out


def frame_level_db(logmel: np.ndarray) -> np.ndarray:
    """(T, N_MELS) ln mel power -> (T,) frame level in dB re a full-scale sine."""
    m = logmel.max(axis=1, keepdims=True)
    return (DB_PER_NEPER * (m[:, 0] + np.log(np.exp(logmel - m).sum(axis=1)))).astype(np.float32)


def normalise(logmel: np.ndarray) -> np.ndarray:
    """(T, N_MELS) ln mel power of one utterance -> (T, N_MELS) float32 normalised features (see the
    module docstring). Silence and anything FLOOR_DB below the speech spectrum is FLOOR."""
    logmel = np.asarray(logmel, np.float32)
    if len(logmel) == 0:
        return logmel.copy()
    level = frame_level_db(logmel)
    speech_level = float(np.percentile(level, LEVEL_PERCENTILE))
    if speech_level < SILENCE_DBFS:
        return np.full(logmel.shape, FLOOR, np.float32)
    speech = level >= speech_level - SPEECH_RANGE_DB
    shape = logmel[speech].mean(axis=0)
    feats = (logmel - shape) / FEATURE_SCALE
    return np.maximum(feats, FLOOR).astype(np.float32)


def speech_features(audio: np.ndarray) -> np.ndarray:
    """audio: (N,) float32 mono at SAMPLE_RATE -> (N // HOP_LENGTH + 1, N_MELS) normalised log-mel."""
    return normalise(log_mel(audio))
