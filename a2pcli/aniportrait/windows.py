"""Context windows: which latent frames the denoiser sees together.

`uniform` restates AnimateDiff's context scheduler as AniPortrait's pipeline calls it
(`uniform(0, steps, N, 16, 1, 4)`, closed loop): a single window when N <= 16, otherwise windows of
16 frames starting at 0, 12, 24, ... < N that wrap modulo N. Note that `closed_loop=False` still
wraps: it only drops the starts >= N - overlap.

`no_wrap` is the clean alternative: the same stride, the last window aligned to N - 16, so the
clip's end never mixes with its start.

`context_windows(N, config-ish...)` picks one of the two.
"""

from __future__ import annotations

import math


def ordered_halving(val: int) -> float:
    """The bit-reversed fraction of `val` (64-bit), as in AnimateDiff's context.py."""
    bin_flip = f"{val:064b}"[::-1]
    return int(bin_flip, 2) / (1 << 64)


def uniform(step: int = 0, num_steps: int | None = None, num_frames: int = 0, context_size: int = 16,
            context_stride: int = 3, context_overlap: int = 4, closed_loop: bool = True) -> list[list[int]]:
    """AnimateDiff/AniPortrait's `uniform` context scheduler, returned as a list of windows.
    `num_steps` is accepted for signature compatibility and unused, as in the original."""
    if num_frames <= context_size:
        return [list(range(num_frames))]
    context_stride = min(context_stride, int(math.ceil(math.log2(num_frames / context_size))) + 1)
    out: list[list[int]] = []
    for context_step in (1 << s for s in range(context_stride)):
        pad = int(round(num_frames * ordered_halving(step)))
        for j in range(int(ordered_halving(step) * context_step) + pad,
                       num_frames + pad + (0 if closed_loop else -context_overlap),
                       context_size * context_step - context_overlap):
            out.append([e % num_frames for e in range(j, j + context_size * context_step, context_step)])
    return out


def no_wrap(num_frames: int, context_size: int = 16, context_overlap: int = 4) -> list[list[int]]:
    """Windows of `context_size` consecutive frames, advancing by size - overlap, the last one
    aligned to the clip's end; a single window when the clip is not longer than one window."""
    if num_frames <= context_size:
        return [list(range(num_frames))]
    stride = context_size - context_overlap
    starts = list(range(0, num_frames - context_size + 1, stride))
    if starts[-1] + context_size < num_frames:
        starts.append(num_frames - context_size)
    return [list(range(s, s + context_size)) for s in starts]


def context_windows(num_frames: int, context_frames: int = 16, context_overlap: int = 4,
                    context_stride: int = 1, mode: str = "closed_loop") -> list[list[int]]:
    """The windows the sampler uses: "closed_loop" is the pipeline's call exactly; "no_wrap" the
    non-wrapping alternative (context_stride does not apply to it)."""
    if num_frames < 1:
        raise ValueError("no frames to window")
    if mode == "closed_loop":
        return uniform(0, None, num_frames, context_frames, context_stride, context_overlap, closed_loop=True)
    if mode == "no_wrap":
        return no_wrap(num_frames, context_frames, context_overlap)
    raise ValueError(f"unknown window mode {mode!r}")


def coverage(windows: list[list[int]], num_frames: int) -> list[int]:
    """How many windows contain each frame (the averaging counter)."""
    count = [0] * num_frames
    for w in windows:
        for f in w:
            count[f] += 1
    return count
