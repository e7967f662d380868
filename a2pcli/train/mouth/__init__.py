"""Training the mouth model (a2pcli.mouthnet) on talking videos, in self-reenactment.

    train(TrainOptions(...), reporter, poses=()) -> summary dict     (what `a2p train mouth` calls)
    prepare_data(TrainOptions(...), reporter)                         (the data only, into the cache: `a2p train all`)

A frame of a clip is the portrait, other frames of the same clip are targets: their landmarks drive the
renderer's warp, their pixels are the truth. Speech is not needed. Stages, one module each:
  samples.py   per clip: portrait frames (the first, the widest open mouth, a closed one), every stride-th
               frame a target, retargeted and warped by the renderer itself (WarpRenderer.mouth_crops), the
               real frame's crop the truth; only the frames the renderer would have the model paint are kept;
               cached in the shared data cache (a2pcli.train.clips), landmarks shared with audio2motion's data
  batches.py   the training set, its sampling weights (more where the mouth changes most, speakers with many
               samples capped), batches with flips and colour changes applied to portrait, warp and truth alike
               (the model must take its colours from the portrait)
  losses.py    L1, SSIM and image-gradient terms inside the painted region, a patch discriminator, metrics
  loop.py      the trainer a2pcli.train.core.fit drives (the discriminator trained one step before each of
               the network's, the adversarial term after a warm-up: a blurry, averaged mouth is not accepted),
               validation on the held-out speakers (SSIM, PSNR, sharpness against the real crops, the warp alone
               for scale), export (config.json + model.safetensors: a2pcli.mouthnet.load_model(OUT)), `train`
  presets.py   `tiny` (the whole loop in seconds on a CPU) and `default` (the shipped model's recipe)
  synthetic.py samples for tests without videos

Seeded: the split, every batch and every augmentation derive from --seed and the epoch number. Under torchrun
every process trains on its share of the training clips and the discriminator's gradients are averaged too.
"""

from a2pcli.train.core import TrainOptions
from a2pcli.train.mouth.loop import prepare_data, train
from a2pcli.train.mouth.presets import PRESETS, MouthPreset

__all__ = ["PRESETS", "MouthPreset", "TrainOptions", "prepare_data", "train"]
