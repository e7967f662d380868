"""A toy trainer on the shared training core (a2pcli.train.core), for the tests: it fits y = 2x + 1 to a fixed
set of noisy samples, each process drawing its batches from its own share of them.

    train(TrainOptions, reporter) -> summary     a whole trainer: what `a2p train all` runs for a component
    python tests/toy_trainer.py OUT EPOCHS       under torchrun: trains into OUT, and each process writes
                                                 OUT/rank<r>.json: its final weights and the samples it saw
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script (torchrun): the package is in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2pcli.progress import Reporter  # noqa: E402
from a2pcli.train import core  # noqa: E402

NAME = "toy-line"
N_SAMPLES = 64
PRESETS = ("tiny", "default")


class LineTrainer:
    """a2pcli.train.core.Trainer: batches of this process's share of the samples."""

    name = NAME

    def __init__(self, runtime: core.Runtime, seed: int, batch_size: int = 8):
        rng = np.random.default_rng(1234)
        self.x = rng.uniform(-1, 1, (N_SAMPLES, 1)).astype(np.float32)
        self.y = (2 * self.x + 1 + 0.01 * rng.standard_normal(self.x.shape)).astype(np.float32)
        self.runtime, self.seed, self.batch_size = runtime, seed, batch_size
        self.seen: dict[int, list[int]] = {}

    def batches(self, epoch, rng):
        share = self.runtime.shard(np.ones(N_SAMPLES), core.derive_seed(self.seed, "shard", epoch))
        self.seen[epoch] = share
        while True:
            pick = rng.choice(share, size=self.runtime.per_process(self.batch_size))
            yield self.x[pick], self.y[pick]

    def loss(self, net, batch):
        import torch

        x, y = (torch.from_numpy(a) for a in batch)
        err = ((net(x) - y) ** 2).mean()
        return err, {"mse": float(err.detach())}

    def validate(self, ema):
        import torch

        with torch.no_grad():
            return {"val_bias": round(float(ema.bias), 4)}

    def describe_epoch(self, row, epochs):
        return f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}"

    def checkpoint_extra(self):
        return {"note": "toy"}, {}


def fit_line(out: Path, epochs: int, seed: int, device: str, reporter: Reporter, resume: bool = False):
    """(network, trainer, state, runtime) after training into `out`."""
    import torch

    loop = core.LoopSettings(epochs=epochs, steps_per_epoch=10, lr=0.1, warmup_steps=2, weight_decay=0.0,
                             grad_clip=1.0, ema_decay=0.5)
    runtime = core.start_runtime(device, None)
    with core.output_folder(out):
        core.start_log(out, resumed=resume)
        core.seed_all(seed)
        net = torch.nn.Linear(1, 1)
        ema = core.make_ema(net, loop.ema_decay)
        optim = core.make_optimizer(net, loop)
        state = core.RunState()
        if resume:
            state = core.restore(core.load_checkpoint(core.find_checkpoint(out), NAME), net, ema, optim)
        trainer = LineTrainer(runtime, seed)
        core.fit(trainer, net, ema, optim, state, loop, core.Run(out, runtime, seed), reporter)
        if runtime.is_main:
            core.write_model_files(out, {"format": NAME, "model": {"in": 1, "out": 1}}, ema.state_dict())
    return net, trainer, state, runtime


def train(opts: core.TrainOptions, reporter: Reporter | None = None) -> dict:
    """The toy as a component of `a2p train all` (its data folders are checked, not read)."""
    started = time.time()
    core.check_options(opts, PRESETS)
    core.check_output_folder(opts.output)
    net, _, state, runtime = fit_line(Path(opts.output), opts.epochs or 2, opts.seed, opts.device,
                                      reporter or Reporter(), resume=opts.resume is not None)
    return {"output": str(opts.output), "steps": state.step, "device": runtime.device, "pid": os.getpid(),
            "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "started": started, "ended": time.time()}


if __name__ == "__main__":
    out, epochs = Path(sys.argv[1]), int(sys.argv[2])
    net, trainer, state, runtime = fit_line(out, epochs, seed=7, device="cpu", reporter=Reporter(),
                                            resume=len(sys.argv) > 3 and sys.argv[3] == "resume")
    (out / f"rank{runtime.rank}.json").write_text(json.dumps({
        "rank": runtime.rank, "world_size": runtime.world_size, "step": state.step,
        "weight": float(net.weight.detach()), "bias": float(net.bias.detach()),
        "seen": {str(k): v for k, v in trainer.seen.items()}}))
