"""audio2pose's training run: the flow-matching loss, the `Trainer` that a2pcli.train.core.fit drives, export,
and `train`, the orchestrator `a2p train audio2pose` calls."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from a2pcli.audio2pose import CONFIG_FILE, WEIGHTS_FILE, A2PConfig, Audio2PoseModel, build_network, save_model
from a2pcli.errors import InputError
from a2pcli.progress import Reporter
from a2pcli.train import core
from a2pcli.train.audio2pose.batches import MARGIN_FRAMES, epoch_batches
from a2pcli.train.audio2pose.data import DATASET_FILE, PoseClip, load_clips, save_dataset
from a2pcli.train.audio2pose.evaluate import evaluate_clips, summarise
from a2pcli.train.audio2pose.presets import (PRESETS, PosePreset, loop_settings, preset_dict, preset_from_dict,
                                             resolve_preset)
from a2pcli.train.audio2pose.targets import (MEASURE_SMOOTH_S, MIN_SEGMENT_S, Segment, all_segments,
                                             effective_seconds, pose_std, segment_weights, split, split_from_names)
from a2pcli.train.core import TrainOptions

NAME = "audio2pose"
JOB_VRAM = 1 << 30  # bytes of free GPU memory a run needs (the default preset at batch 16)
MIN_CLIPS = 2  # one speaker trains, one is held out


@dataclass
class PoseContext:
    """Everything one run works with."""

    clips: list[PoseClip]
    train_idx: list[int]
    val_idx: list[int]
    segs: list[Segment]  # the training clips' stretches of usable pose
    weights: np.ndarray  # (S,) their sampling probabilities
    cfg: A2PConfig
    p: PosePreset
    opts: TrainOptions
    poses: tuple[Path, ...]
    runtime: core.Runtime
    out: Path

    @property
    def device(self) -> str:
        return self.runtime.device


# --- the loss (conditional flow matching) ------------------------------------------------------------------


def flow_loss(net, speech, target, mask, rng: np.random.Generator, p: PosePreset):
    """Rectified-flow loss: x_t = (1 - t) noise + t target, t logit-normal (the middle times, where the speech
    decides most, drawn more often); the net predicts target - noise from x_t, t and the speech (dropped for a
    share of the crops). speech: (B, N_INPUT, 4 (L + 2 M)), target: (B, N_POSE, L), mask: (B, L) tensors."""
    import torch

    bsz = target.shape[0]
    t = torch.from_numpy((1 / (1 + np.exp(-rng.standard_normal(bsz)))).astype(np.float32)).to(target.device)
    noise = torch.from_numpy(rng.standard_normal(target.shape).astype(np.float32)).to(target.device)
    keep = torch.from_numpy((rng.random(bsz) >= p.cond_drop).astype(np.float32)).to(target.device)
    xt = (1 - t)[:, None, None] * noise + t[:, None, None] * target
    v = net(xt, speech, t, keep, MARGIN_FRAMES)
    err = ((v - (target - noise)) ** 2).sum(1)  # (B, L)
    return (err * mask).sum() / mask.sum().clamp(min=1.0) / target.shape[1]


# --- the trainer the core loop drives ----------------------------------------------------------------------


class Audio2PoseTrainer:
    """a2pcli.train.core.Trainer for audio2pose: crops of the training stretches, the loss above, validation
    on the held-out clips through the model's generate path."""

    name = NAME

    def __init__(self, ctx: PoseContext):
        self.ctx = ctx
        self.std = np.asarray(ctx.cfg.pose_std, np.float32)
        self.rng: np.random.Generator | None = None

    def batches(self, epoch: int, rng: np.random.Generator):
        """This process's share of the stretches (all of them in one process), its part of each batch."""
        ctx, runtime = self.ctx, self.ctx.runtime
        self.rng = rng  # the loss draws its flow times and noise from the same stream, step by step
        segs, weights = ctx.segs, ctx.weights
        share = runtime.shard(weights, core.derive_seed(ctx.opts.seed, "shard", epoch))
        if len(share) < len(segs):
            segs, weights = [segs[i] for i in share], weights[share] / weights[share].sum()
        return epoch_batches(ctx.clips, segs, weights, rng, ctx.p, runtime.per_process(ctx.p.batch_size), self.std)

    def loss(self, net, batch):
        import torch

        x, y, m = (torch.from_numpy(a).to(self.ctx.device) for a in batch)
        loss = flow_loss(net, x, y, m, self.rng, self.ctx.p)
        return loss, {}

    def validate(self, ema) -> dict:
        return {k: v for k, v in validate(self.ctx, ema).items() if k != "val_clips"}

    def describe_epoch(self, row: dict, epochs: int) -> str:
        s = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f}"
        if "val_model_std_ratio" in row:
            fmt = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
            s += (f"; val spread x{fmt(row['val_model_std_ratio'])}, speed x{fmt(row['val_model_velocity_ratio'])} "
                  f"(yaw/pitch/roll), onset r {row['val_model_onset_r']:.3f} (real {row['val_real_onset_r']:.3f}, "
                  f"control {row['val_control_onset_r']:.3f})")
        return s + f"; {row['seconds']:.0f} s"

    def checkpoint_extra(self) -> tuple[dict, dict]:
        ctx = self.ctx
        meta = {"config": asdict(ctx.cfg), "preset": preset_dict(ctx.p), "options": options_dict(ctx),
                "split": {"train": [ctx.clips[i].name for i in ctx.train_idx],
                          "val": [ctx.clips[i].name for i in ctx.val_idx]}}
        return json.loads(json.dumps(meta, default=str)), {}


def model_for_eval(ctx: PoseContext, net) -> Audio2PoseModel:
    net.eval()
    return Audio2PoseModel(ctx.cfg, net, {}, ctx.device)


def validate(ctx: PoseContext, net, rule: bool = False) -> dict:
    """Motion statistics of the held-out clips, real against generated (evaluate.evaluate_clips)."""
    if not ctx.val_idx:
        return {}
    rows = evaluate_clips(model_for_eval(ctx, net), [ctx.clips[i] for i in ctx.val_idx], ctx.p.val_seeds, rule=rule)
    s = summarise(rows)
    if not s:
        return {}
    out = {f"val_{k}": v for k, v in s.items()}
    out["val_clips"] = rows
    return out


# --- the run -----------------------------------------------------------------------------------------------


def train(opts: TrainOptions, reporter: Reporter | None = None, poses: tuple[Path, ...] = ()) -> dict:
    """Check the inputs, prepare the data, train, validate, checkpoint and export. Returns the summary.
    `poses`: folders of `a2p extract-pose` output of the videos (a2pcli.train.audio2pose.data.fill_from_poses)."""
    from a2pcli.device import JobEstimate

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    _check(opts, poses)
    ckpt = _load_checkpoint(opts)
    p = resolve_preset(opts) if ckpt is None else _checkpoint_preset(ckpt, resolve_preset(opts).epochs)
    runtime = core.start_runtime(opts.device, JobEstimate("training audio2pose", vram_bytes=JOB_VRAM))
    reporter.info(f"device: {runtime.device} ({runtime.device_name}); preset {opts.preset}, {p.epochs} epochs, "
                  f"batch {p.batch_size}, lr {p.lr:g}")
    core.check_batch_split(runtime, p.batch_size, reporter)
    with core.output_folder(opts.output) as out:
        core.start_log(out, resumed=ckpt is not None)
        ctx = _context(opts, p, poses, ckpt, runtime, out, reporter)
        reporter.info(_data_line(ctx))
        core.seed_all(opts.seed)
        net = build_network(ctx.cfg).to(runtime.device)
        ema = core.make_ema(net, p.ema_decay)
        loop = loop_settings(p)
        optim = core.make_optimizer(net, loop)
        state = core.RunState()
        if ckpt is not None:
            state = core.restore(ckpt, net, ema, optim)
            reporter.info(f"resumed from {ckpt.path} after epoch {state.epoch} (step {state.step})")
        core.fit(Audio2PoseTrainer(ctx), net, ema, optim, state, loop, core.Run(out, runtime, opts.seed), reporter)
        if not runtime.is_main:  # under torchrun rank 0 alone exports
            return core.process_summary(runtime, state, time.perf_counter() - t0)
        model = export(ctx, ema, state)
    return summary(ctx, state, model, time.perf_counter() - t0)


def prepare_data(opts: TrainOptions, reporter: Reporter | None = None) -> dict:
    """The clips `train` reads, prepared into the shared data cache (what `a2p train all` runs for every
    component before any training). InputError when too few of them are usable."""
    reporter = reporter or Reporter()
    core.check_options(opts, PRESETS)
    ckpt = _load_checkpoint(opts)
    p = resolve_preset(opts) if ckpt is None else _checkpoint_preset(ckpt, resolve_preset(opts).epochs)
    clips, _ = load_clips(opts.data, p.max_clip_s, (), reporter)
    _require_clips(clips, opts)
    return {"clips": len(clips), "seconds": round(sum(c.duration for c in clips), 1)}


def _check(opts: TrainOptions, poses: tuple[Path, ...]) -> None:
    core.check_options(opts, PRESETS)
    core.check_output_folder(opts.output)
    for folder in poses:
        if not Path(folder).is_dir():
            what = "is not a folder" if Path(folder).exists() else "not found"
            raise InputError(f"pose folder {what}", subject=str(folder), remedy="--poses takes a folder of .pose files")


def _require_clips(clips: list, opts: TrainOptions) -> None:
    if len(clips) < MIN_CLIPS:
        raise InputError(f"only {len(clips)} usable clip(s)", subject=", ".join(map(str, opts.data)),
                         remedy="training needs talking videos of at least two speakers (one is held out)")


def _load_checkpoint(opts: TrainOptions) -> core.Checkpoint | None:
    path = core.find_checkpoint(opts.resume, opts.output)
    return core.load_checkpoint(path, NAME) if path is not None else None


def _bad_checkpoint(ckpt: core.Checkpoint, why: str) -> InputError:
    return InputError(why, subject=str(ckpt.path), remedy=core.START_AGAIN)


def _checkpoint_preset(ckpt: core.Checkpoint, epochs: int) -> PosePreset:
    try:
        return preset_from_dict(ckpt.meta["preset"], epochs)
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_checkpoint(ckpt, f"holds an unusable preset ({exc})") from None


def _context(opts: TrainOptions, p: PosePreset, poses: tuple[Path, ...], ckpt: core.Checkpoint | None,
             runtime: core.Runtime, out: Path, reporter: Reporter) -> PoseContext:
    """The clips (and their prepared dataset, written into the model folder), the split, the stretches of pose,
    their sampling weights and the model's configuration (the checkpoint's when resuming)."""
    clips, from_videos = load_clips(opts.data, p.max_clip_s, poses, reporter)
    _require_clips(clips, opts)
    if from_videos and runtime.is_main:
        save_dataset(out / DATASET_FILE, clips)
    try:
        if ckpt is not None:
            train_idx, val_idx = split_from_names(ckpt.meta["split"], clips)
            cfg = A2PConfig.from_dict(ckpt.meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_checkpoint(ckpt, f"holds an unusable split or configuration ({exc})") from None
    if ckpt is None:
        train_idx, val_idx = split(clips, opts.val_speakers, p.val_share, opts.seed)
    segs = all_segments(clips, train_idx)
    if not segs:
        raise InputError("no clip has a usable stretch of head pose", subject=", ".join(map(str, opts.data)),
                         remedy=f"training needs talking videos of at least {MIN_SEGMENT_S:g} s with a face throughout")
    if ckpt is None:
        cfg = replace(p.model, pose_std=pose_std(segs))
    weights = segment_weights(clips, segs, p.speaker_cap_s)
    return PoseContext(clips, train_idx, val_idx, segs, weights, cfg, p, opts, tuple(poses), runtime, out)


def _data_line(ctx: PoseContext) -> str:
    clips, segs = ctx.clips, ctx.segs
    spk_t = len({clips[i].speaker for i in ctx.train_idx})
    spk_v = len({clips[i].speaker for i in ctx.val_idx})
    sec = sum(len(s.target) for s in segs) / 25.0
    return (f"data: train {len(ctx.train_idx)} clips / {spk_t} speakers, {len(segs)} stretches of usable pose, "
            f"{sec:.0f} s (sampled as {effective_seconds(clips, segs, ctx.p.speaker_cap_s):.0f} s); "
            f"val {len(ctx.val_idx)} clips / {spk_v} speakers")


# --- export and summary ------------------------------------------------------------------------------------


def options_dict(ctx: PoseContext) -> dict:
    """The options as JSON, paths by their last part only (a shipped model names no folder of the machine it
    was trained on)."""
    d = {k: (Path(v).name if isinstance(v, Path) else v) for k, v in asdict(ctx.opts).items()}
    d["data"] = [Path(x).name for x in ctx.opts.data]
    d["poses"] = [Path(x).name for x in ctx.poses]
    return json.loads(json.dumps(d, default=str))


def data_summary(ctx: PoseContext) -> dict:
    def part(idx):
        spk = sorted({ctx.clips[i].speaker for i in idx})
        return {"clips": len(idx), "speakers": len(spk), "seconds": round(sum(ctx.clips[i].duration for i in idx), 1),
                "speaker_names": spk}

    return {"train": {**part(ctx.train_idx), "segments": len(ctx.segs),
                      "segment_seconds": round(sum(len(s.target) for s in ctx.segs) / 25.0, 1),
                      "effective_seconds": round(effective_seconds(ctx.clips, ctx.segs, ctx.p.speaker_cap_s), 1)},
            "val": part(ctx.val_idx), "data_folders": [Path(d).name for d in ctx.opts.data]}


def export(ctx: PoseContext, net, state: core.RunState) -> Audio2PoseModel:
    """Validate once more (the hand-made rule beside) and write config.json + model.safetensors (the averaged
    weights) into the model folder (loadable with a2pcli.audio2pose.load_model(OUT))."""
    from a2pcli import __version__

    final = validate(ctx, net, rule=True)
    if final and state.history:
        state.history[-1]["final"] = {k: v for k, v in final.items() if k != "val_clips"}
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "a2p_version": __version__,
        "options": options_dict(ctx),
        "preset": json.loads(json.dumps(preset_dict(ctx.p))),
        "data": data_summary(ctx),
        "epochs": state.epoch,
        "steps": state.step,
        "measure_smooth_s": MEASURE_SMOOTH_S,
        "validation": final,
    }
    save_model(ctx.out, ctx.cfg, net.state_dict(), meta)
    model = model_for_eval(ctx, net)
    model.meta, model.path = meta, ctx.out
    return model


def summary(ctx: PoseContext, state: core.RunState, model: Audio2PoseModel, elapsed_s: float) -> dict:
    """What `a2p train audio2pose --json` prints."""
    last = state.history[-1] if state.history else {}
    dataset = ctx.out / DATASET_FILE
    return {
        "output": str(ctx.out),
        "files": [str(ctx.out / CONFIG_FILE), str(ctx.out / WEIGHTS_FILE)],
        "checkpoint": str(ctx.out / core.CHECKPOINT_DIR / core.LAST_CHECKPOINT),
        "dataset": str(dataset) if dataset.is_file() else None,
        "device": ctx.device,
        "epochs": state.epoch,
        "steps": state.step,
        "data": data_summary(ctx),
        "train_loss": last.get("train_loss"),
        "validation": {k: v for k, v in (model.meta.get("validation") or {}).items() if k != "val_clips"},
        "parameters": int(sum(q.numel() for q in model.net.parameters())),
        "elapsed_s": round(elapsed_s, 1),
    }
