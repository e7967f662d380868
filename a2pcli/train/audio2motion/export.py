"""The end of a run: calibrate the output gain, validate once more, write the model folder (config.json +
model.safetensors, loadable with a2pcli.audio2motion.load_model), and the run's summary."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from a2pcli.audio2motion import CONFIG_FILE, WEIGHTS_FILE, Audio2Motion, save_model
from a2pcli.progress import Reporter
from a2pcli.train.audio2motion.context import Context
from a2pcli.train.audio2motion.data import data_summary
from a2pcli.train.audio2motion.evaluate import model_for_eval, spread_gain, validate
from a2pcli.train.audio2motion.presets import preset_dict
from a2pcli.train.core import CHECKPOINT_DIR, LAST_CHECKPOINT, RunState


def options_dict(ctx: Context) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(ctx.opts).items()}


def export(ctx: Context, net, state: RunState, scales: dict, reporter: Reporter) -> Audio2Motion:
    """Calibrate the output gain, validate once more with it, and write config.json + model.safetensors
    (the last epoch's averaged weights) into the output folder."""
    gain = round(spread_gain(ctx, net), 4)
    ctx.cfg = replace(ctx.cfg, output_gain=gain)
    final = validate(ctx, net, scales, gain)
    if final:
        state.history[-1]["final"] = {k: v for k, v in final.items() if k != "val_clips"}
    reporter.info(f"output gain {gain:g} (training clips' mouth-opening spread)"
                  + (f"; validation: mouth-opening r {final['val_mouth_r']:.3f}, spread x{final['val_std_ratio']}"
                     if "val_mouth_r" in final else ""))
    model = model_for_eval(ctx, net)
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "a2p_version": _version(),
        "options": options_dict(ctx),
        "preset": preset_dict(ctx.p),
        "data": data_summary(ctx.clips, ctx.train_idx, ctx.val_idx, ctx.cw, ctx.opts.data),
        "basis_explained": round(ctx.tg.explained, 4),
        "epochs": state.epoch,
        "steps": state.step,
        "output_gain": gain,
        "validation": final,
    }
    save_model(ctx.out, ctx.cfg, net.state_dict(), ctx.tg.basis, ctx.tg.region, model.silence_code, meta)
    model.meta = meta
    model.path = ctx.out
    return model


def _version() -> str:
    from a2pcli import __version__

    return __version__


def summary(ctx: Context, state: RunState, model: Audio2Motion, elapsed_s: float) -> dict:
    """What `a2p train audio2motion --json` prints."""
    last = state.history[-1] if state.history else {}
    return {
        "output": str(ctx.out),
        "files": [str(ctx.out / CONFIG_FILE), str(ctx.out / WEIGHTS_FILE)],
        "checkpoint": str(ctx.out / CHECKPOINT_DIR / LAST_CHECKPOINT),
        "device": ctx.device,
        "epochs": state.epoch,
        "steps": state.step,
        "data": data_summary(ctx.clips, ctx.train_idx, ctx.val_idx, ctx.cw, ctx.opts.data),
        "train_loss": last.get("train_loss"),
        "validation": model.meta.get("validation", {}),
        "output_gain": model.config.output_gain,
        "parameters": int(sum(p.numel() for p in model.net.parameters())),
        "elapsed_s": round(elapsed_s, 1),
    }
