"""audio2motion's training run: the loss, the `Trainer` that a2pcli.train.core.fit drives, and `train`, the
orchestrator `a2p train audio2motion` calls."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from a2pcli.audio2motion import build_network
from a2pcli.errors import InputError
from a2pcli.progress import Reporter
from a2pcli.train import core
from a2pcli.train.audio2motion.batches import epoch_batches
from a2pcli.train.audio2motion.context import Context
from a2pcli.train.audio2motion.data import describe_data, prepare
from a2pcli.train.audio2motion.evaluate import validate
from a2pcli.train.audio2motion.export import export, options_dict, summary
from a2pcli.train.audio2motion.presets import (PRESETS, Preset, loop_settings, preset_dict, preset_from_dict,
                                               resolve_preset)
from a2pcli.train.audio2motion.targets import (build_targets, gap_direction, loss_scales, targets_from_checkpoint,
                                               targets_to_checkpoint)
from a2pcli.train.clips import data_cache_dir, sampling_weights, sources_for, split_from_names, split_speakers
from a2pcli.train.core import TrainOptions

NAME = "audio2motion"
JOB_VRAM = 2 << 30  # bytes of free GPU memory a run needs (the default preset at batch 32)
MIN_CLIPS = 2  # one speaker trains, one is held out
MIN_CORR_CODES = 10  # the lip-gap concordance counts crops with at least this many real code frames


# --- the loss ----------------------------------------------------------------------------------------------


@dataclass
class LossParts:
    total: object  # the tensor to minimise
    codes: float
    gap: float
    velocity: float
    corr: float


def compute_loss(pred, codes, gap, mask, gap_dir, scales: dict, p: Preset) -> LossParts:
    """pred, codes: (B, L, K); gap, mask: (B, L); gap_dir: (K,) lip gap per unit code."""
    import torch

    msum = mask.sum().clamp(min=1.0)
    l_codes = (((pred - codes) ** 2).sum(-1) * mask).sum() / msum / scales["codes"]
    pgap = pred @ gap_dir
    l_gap = (((pgap - gap) ** 2) * mask).sum() / msum / scales["gap"]
    mv = mask[:, 1:] * mask[:, :-1]
    dv = (pred[:, 1:] - pred[:, :-1]) - (codes[:, 1:] - codes[:, :-1])
    l_vel = ((dv**2).sum(-1) * mv).sum() / mv.sum().clamp(min=1.0) / scales["velocity"]
    n = mask.sum(1)
    ok = n >= MIN_CORR_CODES
    if ok.any():
        mu_p = (pgap * mask).sum(1) / n.clamp(min=1)
        mu_t = (gap * mask).sum(1) / n.clamp(min=1)
        a, b = (pgap - mu_p[:, None]) * mask, (gap - mu_t[:, None]) * mask
        nn_ = n.clamp(min=1)
        cov, var_p, var_t = (a * b).sum(1) / nn_, (a**2).sum(1) / nn_, (b**2).sum(1) / nn_
        ccc = 2 * cov / (var_p + var_t + (mu_p - mu_t) ** 2 + 1e-10)  # concordance: correlation and spread
        pearson = cov / torch.sqrt(var_p * var_t + 1e-20)
        keep = ok & (var_t > 1e-8)
        l_corr = (1 - ccc[keep]).mean() if keep.any() else pred.sum() * 0
        l_pear = (1 - pearson[keep]).mean() if keep.any() else pred.sum() * 0
    else:
        l_corr = l_pear = pred.sum() * 0
    total = p.loss_codes * l_codes + p.loss_gap * l_gap + p.loss_velocity * l_vel + p.loss_corr * l_corr
    if p.loss_pearson:
        total = total + p.loss_pearson * l_pear
    return LossParts(total, float(l_codes.detach()), float(l_gap.detach()), float(l_vel.detach()),
                     float(l_corr.detach()))


# --- the trainer the core loop drives ----------------------------------------------------------------------


class Audio2MotionTrainer:
    """a2pcli.train.core.Trainer for audio2motion: random crops of the training clips, the loss above,
    validation on the held-out clips through the inference path."""

    name = NAME

    def __init__(self, ctx: Context):
        import torch

        self.ctx = ctx
        self.scales = loss_scales(ctx.clips, ctx.train_idx)
        self.gap_dir = torch.from_numpy(gap_direction(ctx.tg)).to(ctx.device)
        self.margin = ctx.cfg.context_codes + 2  # codes of context each side of a crop
        self.train_clips = [ctx.clips[i] for i in ctx.train_idx]
        prob = np.array([ctx.cw[i] for i in ctx.train_idx])
        self.prob = prob / prob.sum()

    def batches(self, epoch: int, rng: np.random.Generator):
        """Crops of this process's share of the training clips (all of them in one process), drawn by their
        sampling weights; this process's part of the batch."""
        p, runtime = self.ctx.p, self.ctx.runtime
        share = runtime.shard(self.prob, core.derive_seed(self.ctx.opts.seed, "shard", epoch))
        clips, prob = self.train_clips, self.prob
        if len(share) < len(clips):
            clips, prob = [clips[i] for i in share], self.prob[share] / self.prob[share].sum()
        return epoch_batches(clips, prob, rng, p, runtime.per_process(p.batch_size), self.margin,
                             self.ctx.cfg.n_codes)

    def loss(self, net, batch):
        import torch

        x, y, g, m = (torch.from_numpy(a).to(self.ctx.device) for a in batch)
        pred = net(x).transpose(1, 2)[:, self.margin : self.margin + y.shape[1]]
        parts = compute_loss(pred, y, g, m, self.gap_dir, self.scales, self.ctx.p)
        return parts.total, {"codes": parts.codes, "gap": parts.gap, "velocity": parts.velocity, "corr": parts.corr}

    def validate(self, ema) -> dict:
        return validate(self.ctx, ema, self.scales)

    def describe_epoch(self, row: dict, epochs: int) -> str:
        s = (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f} (codes {row['train_codes']:.3f}, "
             f"gap {row['train_gap']:.3f}, velocity {row['train_velocity']:.3f}, corr {row['train_corr']:.3f})")
        if "val_loss_codes" in row:
            s += f"; val codes {row['val_loss_codes']:.3f}"
        if "val_mouth_r" in row:
            s += (f", mouth-opening r {row['val_mouth_r']:.3f} (envelope {row['val_envelope_r']:.3f}), "
                  f"spread x{row['val_std_ratio']}")
        return s + f"; {row['seconds']:.0f} s"

    def checkpoint_extra(self) -> tuple[dict, dict]:
        ctx = self.ctx
        tmeta, tensors = targets_to_checkpoint(ctx.tg)
        meta = {"config": asdict(ctx.cfg), "preset": preset_dict(ctx.p), "options": options_dict(ctx),
                "split": {"train": [ctx.clips[i].source.name for i in ctx.train_idx],
                          "val": [ctx.clips[i].source.name for i in ctx.val_idx]},
                "targets": tmeta}
        return meta, tensors


# --- the run -----------------------------------------------------------------------------------------------


def train(opts: TrainOptions, reporter: Reporter | None = None) -> dict:
    """Check the inputs, prepare the data, train, validate, checkpoint and export. Returns the summary."""
    from a2pcli.device import JobEstimate

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    core.check_options(opts, PRESETS)
    core.check_output_folder(opts.output)
    sources = sources_for(opts.data)
    ckpt = _load_checkpoint(opts)
    p = resolve_preset(opts) if ckpt is None else _checkpoint_preset(ckpt, resolve_preset(opts).epochs)
    runtime = core.start_runtime(opts.device, JobEstimate("training audio2motion", vram_bytes=JOB_VRAM))
    reporter.info(f"device: {runtime.device} ({runtime.device_name}){_processes(runtime, p)}; preset {opts.preset}, "
                  f"{p.epochs} epochs, batch {p.batch_size}, lr {p.lr:g}")
    core.check_batch_split(runtime, p.batch_size, reporter)
    with core.output_folder(opts.output) as out:
        core.start_log(out, resumed=ckpt is not None)
        ctx = _context(opts, p, sources, ckpt, runtime, out, reporter)
        reporter.info(describe_data(ctx.clips, ctx.train_idx, ctx.val_idx, ctx.cw, ctx.tg.explained))
        core.seed_all(opts.seed)
        net = build_network(ctx.cfg).to(runtime.device)
        ema = core.make_ema(net, p.ema_decay)
        loop = loop_settings(p, _steps_per_epoch(ctx))
        optim = core.make_optimizer(net, loop)
        state = core.RunState()
        if ckpt is not None:
            state = core.restore(ckpt, net, ema, optim)
            reporter.info(f"resumed from {ckpt.path} after epoch {state.epoch} (step {state.step})")
        trainer = Audio2MotionTrainer(ctx)
        core.fit(trainer, net, ema, optim, state, loop, core.Run(out, runtime, opts.seed), reporter)
        if not runtime.is_main:  # under torchrun rank 0 alone exports
            return core.process_summary(runtime, state, time.perf_counter() - t0)
        model = export(ctx, ema, state, trainer.scales, reporter)
    return summary(ctx, state, model, time.perf_counter() - t0)


def prepare_data(opts: TrainOptions, reporter: Reporter | None = None) -> dict:
    """The clips `train` reads, prepared into the shared data cache (what `a2p train all` runs for every
    component before any training). InputError when too few of them are usable."""
    reporter = reporter or Reporter()
    core.check_options(opts, PRESETS)
    sources = sources_for(opts.data)
    ckpt = _load_checkpoint(opts)
    p = resolve_preset(opts) if ckpt is None else _checkpoint_preset(ckpt, resolve_preset(opts).epochs)
    clips = prepare(sources, data_cache_dir(), p.max_clip_s, reporter)
    _require_clips(clips, opts)
    return {"clips": len(clips), "seconds": round(sum(c.duration for c in clips), 1)}


def _require_clips(clips: list, opts: TrainOptions) -> None:
    if len(clips) < MIN_CLIPS:
        raise InputError(f"only {len(clips)} usable clip(s)", subject=", ".join(map(str, opts.data)),
                         remedy="training needs talking videos of at least two speakers (one is held out)")


def _processes(runtime: core.Runtime, p: Preset) -> str:
    if not runtime.distributed:
        return ""
    return f" x {runtime.world_size} processes, {runtime.per_process(p.batch_size)} clips of the batch each"


def _load_checkpoint(opts: TrainOptions) -> core.Checkpoint | None:
    path = core.find_checkpoint(opts.resume, opts.output)
    return core.load_checkpoint(path, NAME) if path is not None else None


def _bad_checkpoint(ckpt: core.Checkpoint, why: str) -> InputError:
    return InputError(why, subject=str(ckpt.path), remedy=core.START_AGAIN)


def _checkpoint_preset(ckpt: core.Checkpoint, epochs: int) -> Preset:
    try:
        return preset_from_dict(ckpt.meta["preset"], epochs)
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_checkpoint(ckpt, f"holds an unusable preset ({exc})") from None


def _context(opts: TrainOptions, p: Preset, sources, ckpt: core.Checkpoint | None, runtime: core.Runtime, out,
             reporter: Reporter) -> Context:
    """The prepared clips, the split, the sampling weights and the targets (the checkpoint's when resuming)."""
    from a2pcli.headpose import load_reference

    clips = prepare(sources, data_cache_dir(), p.max_clip_s, reporter)
    _require_clips(clips, opts)
    if ckpt is not None:
        train_idx, val_idx = split_from_names(_checkpoint_part(ckpt, "split"), clips)
    else:
        train_idx, val_idx = split_speakers(clips, opts.val_speakers, p.val_share, opts.seed)
    cw = sampling_weights(clips, train_idx, p.speaker_cap_s)
    reference = load_reference().mean
    if ckpt is None:
        tg = build_targets(clips, train_idx, p.model.n_codes, cw, reference)
    else:
        try:
            tg = targets_from_checkpoint(_checkpoint_part(ckpt, "targets"), ckpt.tensors, clips)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise _bad_checkpoint(ckpt, f"holds unusable targets ({exc})") from None
    cfg = replace(p.model, n_region=len(tg.region))
    return Context(clips, train_idx, val_idx, cw, tg, cfg, p, opts, runtime, reference, out)


def _checkpoint_part(ckpt: core.Checkpoint, key: str) -> dict:
    part = ckpt.meta.get(key)
    if not isinstance(part, dict):
        raise _bad_checkpoint(ckpt, f"has no {key}")
    return part


def _steps_per_epoch(ctx: Context) -> int:
    """The preset's, else the effective data length over the seconds of one batch."""
    p = ctx.p
    return p.steps_per_epoch or max(1, int(round(sum(ctx.cw.values()) / (p.crop_s * p.batch_size))))
