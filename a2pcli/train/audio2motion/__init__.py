"""Training the audio2motion model (a2pcli.audio2motion) on talking videos with their speech.

    train(TrainOptions(...), reporter) -> summary dict        (what `a2p train audio2motion` calls)
    prepare_data(TrainOptions(...), reporter)                 (the data only, into the cache: `a2p train all`)

Stages, one module each:
  data.py      the clips (a2pcli.train.clips: videos with speech, landmarks and log-mel, cached) with their
               targets; split by speaker (--val-speakers, else a share of the speakers picked by the seed)
  targets.py   per speaker the CLOSED-mouth neutral (mean expression over its frames with the smallest mouth
               opening); deltas = expression - neutral on the lower-face region; a linear basis (uncentred
               PCA) of the training speakers' deltas; the codes and lip gap of every clip at 50 Hz
  batches.py   random crops (time-stretched, vocal-tract warped, noisy) with their targets
  loop.py      the loss (codes, lip gap, its velocity, the gap's per-crop concordance), the trainer that
               a2pcli.train.core.fit drives, and `train`, the orchestrator
  evaluate.py  validation each epoch on whole held-out clips through the same predict path as inference
               (mouth-opening correlation and spread vs the real clip, and a loudness-envelope baseline);
               evaluate_model / pause_check for finished models
  export.py    output-gain calibration, config.json + model.safetensors (a2pcli.audio2motion.load_model(OUT))
  presets.py   `tiny` (the whole loop in seconds on a CPU) and `default` (the shipped model's recipe)

Seeded: the split, every crop and every augmentation derive from --seed and the epoch number, so a run
resumed from a checkpoint continues exactly as an uninterrupted one would (on the same device).
"""

from a2pcli.train.audio2motion.loop import prepare_data, train
from a2pcli.train.audio2motion.presets import PRESETS, Preset
from a2pcli.train.core import TrainOptions

__all__ = ["PRESETS", "Preset", "TrainOptions", "prepare_data", "train"]
