"""The mouth model's training run: the `Trainer` that a2pcli.train.core.fit drives (the network's losses and an
adversarial patch discriminator trained beside it), validation, export, and `train`, the orchestrator
`a2p train mouth` calls."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from a2pcli.errors import InputError
from a2pcli.progress import Reporter
from a2pcli.train import core
from a2pcli.train.clips import data_cache_dir, sources_for, split_from_names
from a2pcli.train.core import TrainOptions
from a2pcli.train.mouth.batches import DataSet, epoch_batches, join, sampling_weights, to_device
from a2pcli.train.mouth.losses import (
    build_discriminator,
    composite,
    disc_input,
    image_losses,
    laplacian_var,
    luma,
    ssim_map,
)
from a2pcli.train.mouth.presets import (
    BETAS,
    DISC_BETAS,
    PRESETS,
    MouthPreset,
    loop_settings,
    preset_dict,
    preset_from_dict,
    resolve_preset,
)
from a2pcli.train.mouth.samples import ClipSamples, limit_per_speaker, prepare_samples

NAME = "mouth"
JOB_VRAM = 1 << 30  # bytes of free GPU memory a run needs (the default preset holds its samples on the GPU)
MIN_CLIPS = 2  # one speaker trains, one is held out
OPEN_MARGIN = 0.03  # face units: validation counts targets whose mouth opens wider than the portrait's by this
VAL_BATCH = 64
DISC_PREFIX, DISC_OPT_PREFIX = "disc.", "disc_optimizer."  # the discriminator's tensors in a checkpoint


@dataclass
class MouthContext:
    """Everything one run works with."""

    clips: list[ClipSamples]
    train_idx: list[int]
    val_idx: list[int]
    train: DataSet  # on the run's device when it is a GPU
    val: DataSet | None
    val_pick: np.ndarray  # samples of `val` used for validation
    prob: np.ndarray  # (N,) sampling probabilities of the training samples
    p: MouthPreset
    opts: TrainOptions
    runtime: core.Runtime
    out: Path

    @property
    def device(self) -> str:
        return self.runtime.device


# --- the trainer the core loop drives ----------------------------------------------------------------------


class MouthTrainer:
    """a2pcli.train.core.Trainer for the mouth model. Each step's `loss` first trains the discriminator one step
    (once the adversarial loss has started: real mouths against the model's, the hinge loss), then returns the
    network's loss: L1, 1 - SSIM and image gradients inside the painted region, and the adversarial term."""

    name = NAME

    def __init__(self, ctx: MouthContext, disc, optim, optim_disc, step: int):
        self.ctx, self.disc, self.optim, self.optim_disc = ctx, disc, optim, optim_disc
        self.disc_model = core.data_parallel(disc, ctx.runtime)  # its gradients averaged over the processes
        self.step = step  # optimiser steps taken (the core's RunState.step)
        clip_of = ctx.train.clip if isinstance(ctx.train.clip, np.ndarray) else ctx.train.clip.cpu().numpy()
        self.train_clips = np.array(ctx.train_idx)
        self.clip_weights = np.array([ctx.prob[clip_of == i].sum() for i in ctx.train_idx])

    def batches(self, epoch: int, rng: np.random.Generator):
        """This process's part of each batch, drawn from the samples of its share of the training clips (every
        clip in one process)."""
        ctx, runtime = self.ctx, self.ctx.runtime
        share = self.train_clips[runtime.shard(self.clip_weights, core.derive_seed(ctx.opts.seed, "shard", epoch))]
        return epoch_batches(ctx.train, ctx.prob, share, rng, ctx.p, runtime.per_process(ctx.p.batch_size),
                             ctx.device)

    def loss(self, net, b: dict):
        p = self.ctx.p
        out, region = composite(net, b, p.model)
        adv = p.loss_adv > 0 and self.step >= p.adv_start
        parts = {"disc": 0.0, "adv": 0.0}
        if adv:
            parts["disc"] = self._disc_step(b, out.detach(), region)
        losses = image_losses(out, b["truth"], region)
        total = p.loss_l1 * losses["l1"] + p.loss_ssim * losses["ssim"] + p.loss_grad * losses["grad"]
        if adv:  # through the discriminator as it stands, without touching its weights
            self.disc.requires_grad_(False)
            g_adv = -self.disc(disc_input(out, b["lips"])).mean()
            self.disc.requires_grad_(True)
            total = total + p.loss_adv * g_adv
            parts["adv"] = float(g_adv.detach())
        self.step += 1
        return total, {**{k: float(v.detach()) for k, v in losses.items()}, **parts}

    def _disc_step(self, b: dict, fake, region) -> float:
        """One step of the discriminator (at the network's learning rate): real mouths (the truth in the painted
        region) against the model's, in one batch."""
        import torch

        for group in self.optim_disc.param_groups:
            group["lr"] = self.optim.param_groups[0]["lr"]
        real = b["warped"] + region * (b["truth"] - b["warped"])
        d_real, d_fake = self.disc_model(torch.cat([disc_input(real, b["lips"]), disc_input(fake, b["lips"])])).chunk(2)
        loss = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
        self.optim_disc.zero_grad(set_to_none=True)
        loss.backward()
        self.optim_disc.step()
        return float(loss.detach())

    def validate(self, ema) -> dict:
        return validate(self.ctx, ema)

    def describe_epoch(self, row: dict, epochs: int) -> str:
        s = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} (L1 {row['train_l1']:.4f})"
        if "val_ssim" in row:
            s += (f"; val SSIM {row['val_ssim']:.3f} (warp {row['val_ssim_warp']:.3f}), PSNR {row['val_psnr']:.2f} dB "
                  f"(warp {row['val_psnr_warp']:.2f}), sharpness x{row['val_sharpness']}")
        return s + f"; {row['seconds']:.0f} s"

    def checkpoint_extra(self) -> tuple[dict, dict]:
        ctx = self.ctx
        meta = {"config": preset_dict(ctx.p)["model"], "preset": preset_dict(ctx.p), "options": options_dict(ctx.opts),
                "split": {"train": [ctx.clips[i].source.name for i in ctx.train_idx],
                          "val": [ctx.clips[i].source.name for i in ctx.val_idx]}}
        tensors = {DISC_PREFIX + k: v for k, v in self.disc.state_dict().items()}
        for i, state in self.optim_disc.state_dict()["state"].items():
            tensors.update({f"{DISC_OPT_PREFIX}{i}.{k}": v for k, v in state.items()})
        return meta, tensors

    def restore_disc(self, ckpt: core.Checkpoint) -> None:
        """The discriminator and its optimiser's moments from a checkpoint (strict); InputError naming the file
        when they do not fit."""
        import torch

        try:
            self.disc.load_state_dict({k[len(DISC_PREFIX):]: v for k, v in ckpt.tensors.items()
                                       if k.startswith(DISC_PREFIX)}, strict=True)
            params = list(self.disc.parameters())
            state: dict[int, dict] = {}
            for key, t in ckpt.tensors.items():
                if key.startswith(DISC_OPT_PREFIX):
                    i, name = key[len(DISC_OPT_PREFIX):].split(".", 1)
                    if not (t.ndim == 0 or t.shape == params[int(i)].shape) or not bool(torch.isfinite(t).all()):
                        raise ValueError(f"discriminator optimiser state {key} does not fit")
                    state.setdefault(int(i), {})[name] = t
            fresh = self.optim_disc.state_dict()
            self.optim_disc.load_state_dict({"state": state, "param_groups": fresh["param_groups"]})
        except (RuntimeError, ValueError, IndexError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"its discriminator does not fit this network ({first[:200]})", subject=str(ckpt.path),
                             remedy=core.START_AGAIN) from None


# --- validation --------------------------------------------------------------------------------------------


def validate(ctx: MouthContext, net) -> dict:
    """Crop metrics on the held-out speakers' samples whose real mouth opens wider than the portrait's:
    SSIM (luma) and PSNR (RGB) of the model's crop and of the warp alone against the real crop, and the
    sharpness (Laplacian variance) of the model's crops over the real ones'."""
    import torch

    from a2pcli.train.mouth.batches import batch_tensors

    if ctx.val is None or not len(ctx.val_pick):
        return {}
    pick = ctx.val_pick[ctx.val.change[ctx.val_pick] > OPEN_MARGIN]
    if not len(pick):
        return {}
    was_training = net.training
    net.eval()
    rows: dict[str, list] = {"ssim": [], "psnr": [], "ssim_warp": [], "psnr_warp": [], "lap": [], "lap_real": []}
    with torch.no_grad():
        for a in range(0, len(pick), VAL_BATCH):
            b = batch_tensors(ctx.val, pick[a : a + VAL_BATCH], ctx.device)
            out, _ = composite(net, b, ctx.p.model)
            out = out.clamp(0, 255).round()
            for key, img in (("", out), ("_warp", b["warped"])):
                rows["ssim" + key] += ssim_map(luma(img), luma(b["truth"])).flatten(1).mean(1).tolist()
                mse = ((img - b["truth"]) ** 2).flatten(1).mean(1).clamp(min=1e-6)
                rows["psnr" + key] += (10 * torch.log10(255.0**2 / mse)).tolist()
            rows["lap"] += laplacian_var(luma(out)).tolist()
            rows["lap_real"] += laplacian_var(luma(b["truth"])).tolist()
    net.train(was_training)
    lap = float(np.mean(rows["lap"]) / max(np.mean(rows["lap_real"]), 1e-9))
    return {"val_samples": len(pick), "val_ssim": round(float(np.mean(rows["ssim"])), 4),
            "val_psnr": round(float(np.mean(rows["psnr"])), 3),
            "val_ssim_warp": round(float(np.mean(rows["ssim_warp"])), 4),
            "val_psnr_warp": round(float(np.mean(rows["psnr_warp"])), 3), "val_sharpness": round(lap, 3)}


# --- the run -----------------------------------------------------------------------------------------------


def train(opts: TrainOptions, reporter: Reporter | None = None, poses: tuple[Path, ...] = ()) -> dict:
    """Check the inputs, prepare the data (cached), train, validate, checkpoint and export. Returns the summary.
    `poses`: folders of .pose files (a2p extract-pose output) named after the videos."""
    import torch

    from a2pcli.device import JobEstimate
    from a2pcli.mouthnet import build_network

    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    check_inputs(opts, poses)
    core.check_output_folder(opts.output)
    sources = sources_for(opts.data)
    ckpt = _load_checkpoint(opts)
    p = resolve_preset(opts) if ckpt is None else _checkpoint_preset(ckpt, resolve_preset(opts).epochs)
    runtime = core.start_runtime(opts.device, JobEstimate("training the mouth model", vram_bytes=JOB_VRAM))
    reporter.info(f"device: {runtime.device} ({runtime.device_name}){_processes(runtime, p)}; preset {opts.preset}, "
                  f"{p.epochs} epochs of {p.steps_per_epoch} steps, batch {p.batch_size}, lr {p.lr:g}")
    core.check_batch_split(runtime, p.batch_size, reporter)
    with core.output_folder(opts.output) as out:
        core.start_log(out, resumed=ckpt is not None)
        ctx = _context(opts, p, sources, poses, ckpt, runtime, out, reporter)
        reporter.info(_data_line(ctx))
        core.seed_all(opts.seed)
        net = build_network(p.model).to(runtime.device)
        disc = build_discriminator(p.disc_channels).to(runtime.device)
        ema = core.make_ema(net, p.ema_decay)
        optim = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=0.0, betas=BETAS)
        optim_disc = torch.optim.AdamW(disc.parameters(), lr=p.lr, weight_decay=0.0, betas=DISC_BETAS)
        state = core.RunState()
        if ckpt is not None:
            state = core.restore(ckpt, net, ema, optim)
        trainer = MouthTrainer(ctx, disc, optim, optim_disc, state.step)
        if ckpt is not None:
            trainer.restore_disc(ckpt)
            reporter.info(f"resumed from {ckpt.path} after epoch {state.epoch} (step {state.step})")
        core.fit(trainer, net, ema, optim, state, loop_settings(p), core.Run(out, runtime, opts.seed), reporter)
        if not runtime.is_main:  # under torchrun rank 0 alone exports
            return core.process_summary(runtime, state, time.perf_counter() - t0)
        export(ctx, ema, state)
    return summary(ctx, state, net, time.perf_counter() - t0)


def prepare_data(opts: TrainOptions, reporter: Reporter | None = None, poses: tuple[Path, ...] = ()) -> dict:
    """The samples `train` reads, prepared into the shared data cache (what `a2p train all` runs for every
    component before any training). InputError when too few clips give samples."""
    reporter = reporter or Reporter()
    check_inputs(opts, poses)
    sources = sources_for(opts.data)
    ckpt = _load_checkpoint(opts)
    p = resolve_preset(opts) if ckpt is None else _checkpoint_preset(ckpt, resolve_preset(opts).epochs)
    clips = prepare_samples(limit_per_speaker(sources, p.speaker_clips), data_cache_dir(), p, poses, reporter)
    _require_clips(clips, opts)
    return {"clips": len(clips), "samples": sum(len(c) for c in clips)}


def check_inputs(opts: TrainOptions, poses: tuple[Path, ...]) -> None:
    """The core's checks of the options, and the --poses folders."""
    core.check_options(opts, PRESETS)
    for folder in poses:
        if not Path(folder).is_dir():
            raise InputError("--poses folder not found", subject=str(folder),
                             remedy="--poses takes a folder of .pose files (a2p extract-pose output)")


def _require_clips(clips: list, opts: TrainOptions) -> None:
    if len(clips) < MIN_CLIPS:
        raise InputError(f"only {len(clips)} usable clip(s)", subject=", ".join(map(str, opts.data)),
                         remedy="training needs talking videos of at least two speakers (one is held out)")


def _processes(runtime: core.Runtime, p: MouthPreset) -> str:
    if not runtime.distributed:
        return ""
    return f" x {runtime.world_size} processes, {runtime.per_process(p.batch_size)} crops of the batch each"


def _load_checkpoint(opts: TrainOptions) -> core.Checkpoint | None:
    path = core.find_checkpoint(opts.resume, opts.output)
    return core.load_checkpoint(path, NAME) if path is not None else None


def _checkpoint_preset(ckpt: core.Checkpoint, epochs: int) -> MouthPreset:
    try:
        return preset_from_dict(ckpt.meta["preset"], epochs)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"holds an unusable preset ({exc})", subject=str(ckpt.path), remedy=core.START_AGAIN) from None


def _context(opts: TrainOptions, p: MouthPreset, sources, poses, ckpt: core.Checkpoint | None, runtime: core.Runtime,
             out: Path, reporter: Reporter) -> MouthContext:
    """The prepared samples, the split (the checkpoint's when resuming), the training set (on the GPU when the run
    is on one) and the validation samples."""
    from a2pcli.train.clips import split_speakers

    clips = prepare_samples(limit_per_speaker(sources, p.speaker_clips), data_cache_dir(), p, poses, reporter)
    _require_clips(clips, opts)
    if ckpt is not None:
        split = ckpt.meta.get("split")
        if not isinstance(split, dict):
            raise InputError("has no split", subject=str(ckpt.path), remedy=core.START_AGAIN)
        train_idx, val_idx = split_from_names(split, clips)
    else:
        train_idx, val_idx = split_speakers(clips, opts.val_speakers, p.val_share, opts.seed)
    speakers = sorted({c.source.speaker for c in clips})
    train = join(clips, train_idx, speakers)
    val = join(clips, val_idx, speakers) if val_idx else None
    prob = sampling_weights(train, p.speaker_cap)
    if runtime.device != "cpu":
        train = to_device(train, runtime.device)
    val_pick = np.zeros(0, np.int64)
    if val is not None:
        rng = np.random.default_rng(core.derive_seed(opts.seed, "val"))
        val_pick = np.sort(rng.permutation(len(val))[: p.max_val_samples])
    return MouthContext(clips, train_idx, val_idx, train, val, val_pick, prob, p, opts, runtime, out)


# --- export and summary -------------------------------------------------------------------------------------


def options_dict(opts: TrainOptions) -> dict:
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in asdict(opts).items()}


def export(ctx: MouthContext, net, state: core.RunState) -> None:
    """Write config.json + model.safetensors (the averaged weights) into the output folder
    (a2pcli.mouthnet.load_model(OUT) reads them)."""
    from a2pcli import __version__
    from a2pcli.mouthnet import save_model

    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "a2p_version": __version__,
        "options": options_dict(ctx.opts),
        "preset": preset_dict(ctx.p),
        "data": data_summary(ctx),
        "epochs": state.epoch,
        "steps": state.step,
        "validation": {k: v for k, v in (state.history[-1] if state.history else {}).items() if k.startswith("val_")},
    }
    save_model(ctx.out, ctx.p.model, net.state_dict(), meta)


def data_summary(ctx: MouthContext) -> dict:
    def part(idx, ds):
        spk = sorted({ctx.clips[i].source.speaker for i in idx})
        return {"clips": len(idx), "speakers": len(spk), "samples": 0 if ds is None else len(ds),
                "portraits": 0 if ds is None else len(ds.portraits), "speaker_names": spk}

    return {"train": part(ctx.train_idx, ctx.train), "val": part(ctx.val_idx, ctx.val),
            "data_folders": [str(d) for d in ctx.opts.data]}


def _data_line(ctx: MouthContext) -> str:
    d = data_summary(ctx)
    return (f"data: train {d['train']['clips']} clips / {d['train']['speakers']} speakers / {d['train']['samples']} "
            f"samples, val {d['val']['clips']} clips / {d['val']['speakers']} speakers / {d['val']['samples']} samples")


def summary(ctx: MouthContext, state: core.RunState, net, elapsed_s: float) -> dict:
    """What `a2p train mouth --json` prints."""
    from a2pcli.mouthnet import CONFIG_FILE, WEIGHTS_FILE

    last = state.history[-1] if state.history else {}
    return {
        "output": str(ctx.out),
        "files": [str(ctx.out / CONFIG_FILE), str(ctx.out / WEIGHTS_FILE)],
        "checkpoint": str(ctx.out / core.CHECKPOINT_DIR / core.LAST_CHECKPOINT),
        "device": ctx.device,
        "epochs": state.epoch,
        "steps": state.step,
        "data": data_summary(ctx),
        "train_loss": last.get("train_loss"),
        "validation": {k: v for k, v in last.items() if k.startswith("val_")},
        "parameters": int(sum(q.numel() for q in net.parameters())),
        "elapsed_s": round(elapsed_s, 1),
    }
