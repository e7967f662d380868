"""Training the audio2pose model (a2pcli.audio2pose: speech -> head motion) on talking videos with their speech.

    train(TrainOptions(...), reporter, poses=()) -> summary dict   (what `a2p train audio2pose` calls)
    prepare_data(TrainOptions(...), reporter)                      (the data only, into the cache: `a2p train all`)

Stages, one module each:
  data.py      the clips: head pose, log-mel (the shared data cache, a2pcli.train.clips) and prosody (an entry
               of its own per clip); `a2p extract-pose` output (--poses) instead of MediaPipe where it matches;
               the prepared dataset (`dataset.npz` in the model folder: a data folder holding it trains
               without videos, MediaPipe or ffmpeg)
  targets.py   stretches of usable pose at 25 Hz, smoothed and relative to their mean; the speaker split;
               sampling weights capping each speaker's share
  batches.py   random crops (time-stretched, mirrored, noisy and warped speech) with the speech under them
  evaluate.py  the held-out clips' motion, real against generated (spread, speed, speed vs speech onsets;
               a control on other speech; the hand-made rule)
  loop.py      the flow-matching loss, the trainer a2pcli.train.core.fit drives, export (config.json +
               model.safetensors), and `train`, the orchestrator
  presets.py   `tiny` (the whole loop in seconds on a CPU) and `default` (the shipped model's recipe)

Seeded: the split, crops, noise and augmentation derive from --seed and the epoch number, so a run resumed from
a checkpoint continues exactly as an uninterrupted one would (on the same device).
"""

from a2pcli.train.audio2pose.loop import prepare_data, train
from a2pcli.train.audio2pose.presets import PRESETS, PosePreset
from a2pcli.train.core import TrainOptions

__all__ = ["PRESETS", "PosePreset", "TrainOptions", "prepare_data", "train"]
