"""Speech prosody per feature frame: loudness, pitch and voicing, numpy only.

    prosody(audio, logmel)   audio: (N,) float32 16 kHz mono, logmel: (T, N_MELS) from features.log_mel
                             -> (T, N_PROSODY) float32: [loudness, pitch, voicing], frame t at t / FRAME_RATE s

On the 100 Hz frame grid of a2pcli.features (frame t centred on sample t * HOP_LENGTH), each value
normalised per utterance so that speakers and recordings compare:
  loudness  frame level (features.frame_level_db) minus the utterance's speech level, in units of
            LOUDNESS_UNIT_DB, clipped below at LOUDNESS_FLOOR (silence);
  pitch     log2 of F0 minus the utterance's median over voiced frames (octaves, 0 where unvoiced);
  voicing   the normalised autocorrelation at the chosen period, 0..1 (about 0.9 in a clear vowel).

Pitch is the autocorrelation peak over periods for F0_MIN..F0_MAX Hz in a PITCH_WINDOW window of the
speech decimated to PITCH_RATE, every PITCH_STEP feature frames, with parabolic interpolation; a period whose multiple scores within OCTAVE_TOLERANCE of it is preferred to
the multiple (octave errors). Computed PITCH_CHUNK frames at a time, each chunk from its own stretch of the
speech (decimated with the filter's reach of overlap): memory stays a few MB for any length, and the result equals
one pass over the whole speech.
"""

from __future__ import annotations

import numpy as np

from a2pcli import features

N_PROSODY = 3
LOUDNESS_UNIT_DB = 20.0
LOUDNESS_FLOOR = -2.5  # 50 dB below the speech level: silence
F0_MIN, F0_MAX = 60.0, 400.0  # Hz: the range of speaking voices
PITCH_DECIMATE = 2  # pitch is found at 8 kHz: harmonics above 4 kHz add nothing to the period
PITCH_RATE = features.SAMPLE_RATE // PITCH_DECIMATE
DECIMATE_TAPS = 31  # length of the anti-aliasing filter
PITCH_STEP = 4  # a pitch frame every this many feature frames (40 ms): accents last 100 ms and more
PITCH_WINDOW = 320  # samples at PITCH_RATE (40 ms): two periods of the lowest F0
PITCH_FFT = 1024  # zero-padded: a linear (not circular) autocorrelation up to PITCH_WINDOW lags
AUDIBLE_POWER = 1e-7  # mean square (about -70 dBFS): quieter frames have no pitch to find
VOICED = 0.45  # voicing above this counts as voiced
OCTAVE_TOLERANCE = 0.9  # a shorter period scoring this share of the best one wins (avoids octave-down errors)
PITCH_MEDIAN = 5  # frames: median filter over the pitch track (octave jumps, single-frame errors)
PITCH_CHUNK = 100  # pitch frames computed at a time (4 s of audio): about 5 MB of FFT temporaries


def _autocorrelation(frames: np.ndarray) -> np.ndarray:
    """(F, W) frames -> (F, W) normalised, unbiased autocorrelation for lags 0..W-1 (1 at lag 0)."""
    frames = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames, PITCH_FFT, axis=1)
    ac = np.fft.irfft(spec.real**2 + spec.imag**2, PITCH_FFT, axis=1)[:, : frames.shape[1]]
    w = frames.shape[1]
    ac = ac / (w - np.arange(w))[None]  # unbiased: each lag averages over its overlap
    return ac / np.maximum(ac[:, :1], 1e-12)


def _decimation_filter() -> np.ndarray:
    """(DECIMATE_TAPS,) float32 windowed-sinc low-pass below PITCH_RATE's Nyquist."""
    k = np.arange(-DECIMATE_TAPS // 2 + 1, DECIMATE_TAPS // 2 + 1)
    cutoff = 0.9 / PITCH_DECIMATE  # of the old Nyquist
    h = np.sinc(cutoff * k) * cutoff * np.hamming(len(k))
    h /= h.sum()
    return h.astype(np.float32)


def _decimate(audio: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """16 kHz -> PITCH_RATE Hz: the low-pass, then every PITCH_DECIMATE-th sample; samples start..stop-1 of the
    decimated speech (default: all), computed from the stretch of `audio` they need (zeros beyond its ends)."""
    n = (len(audio) + PITCH_DECIMATE - 1) // PITCH_DECIMATE
    stop = n if stop is None else min(stop, n)
    if stop <= start:
        return np.zeros(0, np.float32)
    reach = DECIMATE_TAPS // 2
    a, b = start * PITCH_DECIMATE - reach, (stop - 1) * PITCH_DECIMATE + reach + 1  # the samples they need
    seg = np.zeros(b - a, np.float32)
    lo, hi = max(a, 0), min(b, len(audio))
    seg[lo - a : hi - a] = audio[lo:hi]
    return np.convolve(seg, _decimation_filter(), mode="valid")[::PITCH_DECIMATE]


def pitch_track(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """audio: (N,) float32 16 kHz -> F0 in Hz (T,) (0 where unvoiced) and voicing 0..1 (T,),
    T = features.n_frames(N), on the feature frame grid (computed every PITCH_STEP frames, interpolated)."""
    audio = features.check_audio(audio)
    total = features.n_frames(len(audio))
    hop = features.HOP_LENGTH // PITCH_DECIMATE * PITCH_STEP  # decimated samples between pitch frames
    n = (total + PITCH_STEP - 1) // PITCH_STEP  # pitch frame j sits on feature frame j * PITCH_STEP
    f0 = np.zeros(n, np.float32)
    voicing = np.zeros(n, np.float32)
    half = PITCH_WINDOW // 2
    for a in range(0, n, PITCH_CHUNK):
        b = min(n, a + PITCH_CHUNK)
        s0 = a * hop - half  # the chunk's first decimated sample (negative: zeros before the speech)
        seg = np.zeros((b - 1 - a) * hop + PITCH_WINDOW, np.float32)
        x0 = max(s0, 0)
        x = _decimate(audio, x0, s0 + len(seg))
        seg[x0 - s0 : x0 - s0 + len(x)] = x
        frames = np.lib.stride_tricks.sliding_window_view(seg, PITCH_WINDOW)[::hop][: b - a]
        f0[a:b], voicing[a:b] = _pitch_frames(frames)
    f0 = _median_filter_voiced(f0)
    # back to the feature frame grid: voicing interpolated, F0 held from the nearest pitch frame
    pos = np.arange(total) / PITCH_STEP
    near = np.clip(np.round(pos).astype(np.int64), 0, n - 1)
    return f0[near], np.interp(pos, np.arange(n), voicing).astype(np.float32)


def _pitch_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, PITCH_WINDOW) windows of the decimated speech -> F0 in Hz (F,) (0 where unvoiced), voicing (F,)."""
    lo = int(PITCH_RATE / F0_MAX)
    hi = int(np.ceil(PITCH_RATE / F0_MIN))
    energy = (frames.astype(np.float64) ** 2).mean(axis=1)
    ac = _autocorrelation(frames)[:, lo : hi + 1]
    rows = np.arange(len(ac))
    best = ac.argmax(axis=1)
    peak = ac[rows, best]
    # octave errors: a peak at half the period (twice the frequency) scoring nearly as well is the pitch
    halfp = np.clip(np.round((best + lo) / 2).astype(np.int64) - lo, 0, ac.shape[1] - 1)
    use_half = ((best + lo) / 2 >= lo) & (ac[rows, halfp] >= OCTAVE_TOLERANCE * peak)
    best = np.where(use_half, halfp, best)
    peak = ac[rows, best]
    # parabolic interpolation around the peak
    left, right = ac[rows, np.clip(best - 1, 0, None)], ac[rows, np.clip(best + 1, None, ac.shape[1] - 1)]
    den = left - 2 * peak + right
    safe = np.where(np.abs(den) > 1e-9, den, 1.0)
    shift = np.where(np.abs(den) > 1e-9, 0.5 * (left - right) / safe, 0.0)
    period = best + lo + np.clip(shift, -0.5, 0.5)
    audible = energy > AUDIBLE_POWER
    v = np.where(audible, np.clip(peak, 0.0, 1.0), 0.0)
    return np.where(v > VOICED, PITCH_RATE / period, 0.0), v


def _median_filter_voiced(f0: np.ndarray) -> np.ndarray:
    """Median over PITCH_MEDIAN frames of the voiced values only; unvoiced frames stay 0."""
    if len(f0) < PITCH_MEDIAN:
        return f0
    r = PITCH_MEDIAN // 2
    padded = np.pad(f0, r, mode="constant")
    win = np.lib.stride_tricks.sliding_window_view(padded, PITCH_MEDIAN).astype(np.float64)
    win = np.where(win > 0, win, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(win, axis=1)
    return np.where(f0 > 0, np.nan_to_num(med), 0.0).astype(np.float32)


def prosody(audio: np.ndarray, logmel: np.ndarray | None = None) -> np.ndarray:
    """audio: (N,) float32 16 kHz mono; logmel: its features.log_mel (computed when None)
    -> (T, N_PROSODY) float32 [loudness, pitch, voicing] per feature frame (see the module docstring)."""
    audio = features.check_audio(audio)
    if logmel is None:
        logmel = features.log_mel(audio)
    n = len(logmel)
    out = np.zeros((n, N_PROSODY), np.float32)
    if n == 0:
        return out
    level = features.frame_level_db(logmel)
    speech_level = float(np.percentile(level, features.LEVEL_PERCENTILE))
    if speech_level < features.SILENCE_DBFS:
        out[:, 0] = LOUDNESS_FLOOR
        return out
    out[:, 0] = np.maximum((level - speech_level) / LOUDNESS_UNIT_DB, LOUDNESS_FLOOR)
    f0, voicing = pitch_track(audio)
    f0, voicing = f0[:n], voicing[:n]
    voiced = (f0 > 0) & (out[: len(f0), 0] > LOUDNESS_FLOOR + 0.5)  # voiced and not far below the speech
    if voiced.any():
        ref = float(np.median(np.log2(f0[voiced])))
        out[: len(f0), 1] = np.where(voiced, np.log2(np.maximum(f0, 1.0)) - ref, 0.0)
    out[: len(voicing), 2] = voicing
    return out
