"""Speech features for audio2motion: log-mel spectra with per-utterance normalisation, numpy only.

    log_mel(audio)          audio: (N,) float32, 16 kHz mono -> (T, N_MELS) float32, natural log of mel power
    normalise(logmel)       (T, N_MELS) -> (T, N_MELS) float32, about unit scale, silence at FLOOR
    speech_shape(logmel)    (N_MELS,) float32 the utterance's mean speech spectrum (None: silence), and
    normalise_with(part, shape)   frames of it normalised with that statistic (normalise, a range at a time)
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
Every step runs over CHUNK_FRAMES frames at a time (the STFT's chunks overlap by the window), so its
temporaries stay a few MB for any length; what is held whole is the (T, N_MELS) float32 log-mel itself (10 min
of audio: 19 MB). speech_shape + normalise_with split normalise into its per-utterance statistic and the
per-frame step, so that a caller can normalise any range of frames without building the whole result.
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
CHUNK_FRAMES = 250  # frames computed at a time (2.5 s of audio): about 3 MB of float64 STFT temporaries
CHECK_SAMPLES = 1 << 20  # samples checked for finiteness at a time (a 1 MB mask, not one as long as the audio)

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
    for a in range(0, len(audio), CHECK_SAMPLES):
        if not np.isfinite(audio[a : a + CHECK_SAMPLES]).all():
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
    out = np.empty(len(logmel), np.float32)
    for a in range(0, len(logmel), CHUNK_FRAMES):
        part = logmel[a : a + CHUNK_FRAMES]
        m = part.max(axis=1, keepdims=True)
        out[a : a + len(part)] = DB_PER_NEPER * (m[:, 0] + np.log(np.exp(part - m).sum(axis=1)))
    return out


def speech_shape(logmel: np.ndarray) -> np.ndarray | None:
    """(T, N_MELS) ln mel power of one utterance -> (N_MELS,) float32 the mean over its speech frames (steps 1-2
    of the module docstring: what normalise subtracts), or None when the utterance is silence (step 3)."""
    level = frame_level_db(logmel)
    speech_level = float(np.percentile(level, LEVEL_PERCENTILE))
    if speech_level < SILENCE_DBFS:
        return None
    speech = level >= speech_level - SPEECH_RANGE_DB
    total = None  # summed in float32 row after row, as logmel[speech].mean(axis=0) does: the same to the bit
    for a in range(0, len(logmel), CHUNK_FRAMES):
        rows = logmel[a : a + CHUNK_FRAMES][speech[a : a + CHUNK_FRAMES]]
        if len(rows):
            total = np.add.reduce(rows if total is None else np.concatenate([total[None], rows]), axis=0)
    return np.true_divide(total, int(speech.sum()), dtype=np.float32)


def normalise_with(logmel: np.ndarray, shape: np.ndarray | None) -> np.ndarray:
    """(T, N_MELS) ln mel power (any range of an utterance's frames) and its speech_shape -> (T, N_MELS) float32
    normalised features: the shape subtracted, scaled, clipped at FLOOR; all FLOOR when shape is None (silence)."""
    if shape is None:
        return np.full(logmel.shape, FLOOR, np.float32)
    feats = np.subtract(logmel, shape, dtype=np.float32)
    feats /= FEATURE_SCALE
    return np.maximum(feats, FLOOR, out=feats)


def normalise(logmel: np.ndarray) -> np.ndarray:
    """(T, N_MELS) ln mel power of one utterance -> (T, N_MELS) float32 normalised features (see the
    module docstring). Silence and anything FLOOR_DB below the speech spectrum is FLOOR."""
    logmel = np.asarray(logmel, np.float32)
    if len(logmel) == 0:
        return logmel.copy()
    shape = speech_shape(logmel)
    out = np.empty(logmel.shape, np.float32)
    for a in range(0, len(logmel), CHUNK_FRAMES):
        out[a : a + CHUNK_FRAMES] = normalise_with(logmel[a : a + CHUNK_FRAMES], shape)
    return out


def speech_features(audio: np.ndarray) -> np.ndarray:
    """audio: (N,) float32 mono at SAMPLE_RATE -> (N // HOP_LENGTH + 1, N_MELS) normalised log-mel."""
    return normalise(log_mel(audio))
