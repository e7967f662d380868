"""audio2motion's view of the prepared clips: each clip with its targets, and the run's data as one object."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from a2pcli.progress import Reporter
from a2pcli.train.clips import PreparedClip, prepare_all


@dataclass
class ClipData(PreparedClip):
    """A prepared clip and its targets at the code rate (filled by targets.clip_targets). T50: code frames."""

    codes: np.ndarray | None = None  # (T50, K) codes at 50 Hz
    gap: np.ndarray | None = None  # (T50,) lip-gap change (lower minus upper inner lip, y), face units
    mask: np.ndarray | None = None  # (T50,) bool: the targets are real

    @classmethod
    def of(cls, clip: PreparedClip) -> ClipData:
        return cls(**{f.name: getattr(clip, f.name) for f in fields(PreparedClip)})


def prepare(sources, cache_dir: Path, max_clip_s: float | None, reporter: Reporter) -> list[ClipData]:
    """Every usable clip (a2pcli.train.clips.prepare_all), ready to take its targets."""
    return [ClipData.of(c) for c in prepare_all(sources, cache_dir, max_clip_s, reporter)]


def describe_data(clips: list[ClipData], train_idx: list[int], val_idx: list[int], cw: dict[int, float],
                  explained: float) -> str:
    """The line reported once the data is ready."""
    spk_t = len({clips[i].source.speaker for i in train_idx})
    spk_v = len({clips[i].source.speaker for i in val_idx})
    sec_t = sum(clips[i].duration for i in train_idx)
    sec_v = sum(clips[i].duration for i in val_idx)
    return (f"data: train {len(train_idx)} clips / {spk_t} speakers / {sec_t:.0f} s "
            f"(sampled as {sum(cw.values()):.0f} s), "
            f"val {len(val_idx)} clips / {spk_v} speakers / {sec_v:.0f} s; basis keeps {100 * explained:.1f}% "
            f"of the lower-face motion")


def data_summary(clips: list[ClipData], train_idx: list[int], val_idx: list[int], cw: dict[int, float],
                 data: tuple[Path, ...]) -> dict:
    """What the run trained and validated on (the model's meta and the --json summary)."""

    def part(idx):
        spk = sorted({clips[i].source.speaker for i in idx})
        return {"clips": len(idx), "speakers": len(spk), "seconds": round(sum(clips[i].duration for i in idx), 1),
                "speaker_names": spk}

    return {"train": {**part(train_idx), "effective_seconds": round(sum(cw.values()), 1)},
            "val": part(val_idx), "data_folders": [str(d) for d in data]}
