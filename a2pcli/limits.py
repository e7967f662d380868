"""The accepted range of every number a user gives a2p, each defined once, and the check that names the flag.

    FPS.check("--fps", 100000)   # InputError: --fps: must be a number from 1 to 120 (frames per second), got 100000

The jobs' options (a2pcli.pipeline.options) and the stages' own options (extract.ExtractOptions) check their
numbers against these before any work, so the command line, `a2p batch` manifests and the Python API refuse
the same values with the same message (exit 2). Every bound says where it comes from.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from a2pcli.errors import InputError


@dataclass(frozen=True)
class Range:
    """Finite numbers from `low` to `high` (both included); whole numbers only when `whole`."""

    low: float
    high: float
    whole: bool = False
    unit: str = ""  # what the number counts, named in the message

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{kind} from {shown(self.low)} to {shown(self.high)}{unit}"

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.whole and not isinstance(value, numbers.Integral):
            return False
        return math.isfinite(value) and self.low <= value <= self.high

    def check(self, flag: str, value, *, optional: bool = False) -> None:
        """InputError naming `flag`, the rule and `value` unless `value` is in the range (None passes when
        `optional`)."""
        if optional and value is None:
            return
        if not self.accepts(value):
            raise InputError(f"must be {self.describe()}, got {shown(value)}", subject=flag)


def shown(value) -> str:
    """A value as a user would type it: 100000 rather than 100000.0; 0.47, nan, inf, 'text'."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return repr(value) if isinstance(value, str) else str(value)


SEED = Range(0, 2**32 - 1, whole=True)  # numpy's and torch's generators take any seed below 2**32 as is
FPS = Range(1, 120, unit="frames per second")  # what video players show; a2p's features resample to any rate
MOTION_SCALE = Range(0, 3)  # --pose-scale, --expression-scale: at 3 a 9-degree nod already distorts the face
BLINK_RATE = Range(0, 60, unit="blinks per minute")  # people blink 2-30 times a minute; 0: never
SIDE = Range(64, 4096, whole=True, unit="pixels")  # --size, --max-size: 4096 is 4K cinema video's width
FACE_INDEX = Range(0, 99, whole=True)  # largest first; the detector reports far fewer faces
REF_FRAME = Range(0, 10**8, whole=True)  # checked again against the motion's length when it is read
BATCH_SIZE = Range(1, 256, whole=True, unit="frames")  # 16 times the GPU's fastest batch (renderers.GPU_BATCH_MAX)
STEPS = Range(1, 200, whole=True)  # denoising steps: 8 times AniPortrait's 25; DDIM allows at most 1000
CFG = Range(0, 20)  # classifier-free guidance: AniPortrait uses 3.5, image diffusion models 1 to 15
ACC = Range(1, 8, whole=True, unit="frames")  # a diffused key frame at least every 0.32 s at 25 fps (a syllable)
SMOOTH = Range(0, 25, unit="frames")  # Gaussian sigma: 25 frames is a second of video at 25 fps
TIME_S = Range(0, 24 * 3600, unit="seconds")  # --start, --end: a day of video
MAX_GAP_S = Range(0, 60, unit="seconds")  # face-less gaps interpolated up to this long
