"""The renderers behind every video command: target landmarks of a portrait -> frames -> a video file.

    renderer = make_renderer(job.render, job.video, models)    # job: options.resolved(...)
    summary = renderer.render(portrait, targets, fps, tmp_path, audio, reporter, frames_dir)

Two implement the `Renderer` protocol: `WarpVideoRenderer` (the embedded renderer, a2pcli.render, on CPU
or GPU, frames rendered in batches and streamed into the encoder) and `DiffusionVideoRenderer`
(AniPortrait's, a2pcli.aniportrait.render). Each runs its device preflight before anything heavy loads
and says which device it uses once per run. `render_frames` renders into memory (evaluation, tests).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from a2pcli.audio import AudioTrack
from a2pcli.pipeline.models import Models
from a2pcli.pipeline.options import RendererName, RenderOptions, VideoOptions
from a2pcli.pipeline.portrait import Portrait
from a2pcli.progress import Reporter
from a2pcli.retarget import FaceTargets

CPU_BATCH = 8
GPU_BATCH_MAX = 16  # measured on an H100 at 512x512: 16 frames per batch ran faster than 64
GPU_MEMORY_SHARE = 0.5  # of free VRAM, for --batch-size auto


class Renderer(Protocol):
    name: str

    def render(self, portrait: Portrait, targets: FaceTargets, fps: float, output: Path, audio: AudioTrack | None,
               reporter: Reporter, frames_dir: Path | None = None) -> dict:
        """Render `targets` (pixels of portrait.image) into the video file `output` (a temporary path: callers
        use outputs.atomic_path), with `audio` muxed; returns the run's summary (frames, fps, size, device...)."""
        ...


def make_renderer(render: RenderOptions, video: VideoOptions, models: Models | None = None) -> Renderer:
    """The renderer `render.renderer` names (its options as `options.resolved` leaves them)."""
    if render.renderer == RendererName.aniportrait:
        return DiffusionVideoRenderer(render.diffusion, render.device, video.crf, models or Models())
    return WarpVideoRenderer(render.device, render.batch_size, video.crf, render.mouth_model, models or Models())


def bytes_per_frame(portrait_shape: tuple[int, int], unit: float) -> int:
    """GPU memory one frame of a batch needs: the dense field, sampling grid and frame at the working
    region's size, plus the spline's kernel matrix."""
    from a2pcli.render import ROI_HALF

    h, w = portrait_shape
    side = min(max(h, w), int(2 * ROI_HALF * unit) + 2)
    region = min(h, side) * min(w, side)
    return int(region * 4 * 8 + 4500 * 260 * 4 * 2)  # measured peak at 512x512: 12 MB per frame


def plan_batch(batch_size: str, device: str, per_frame: int) -> int:
    if batch_size != "auto":
        return int(batch_size)
    if not device.startswith("cuda"):
        return CPU_BATCH
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(np.clip(free * GPU_MEMORY_SHARE // max(per_frame, 1), 1, GPU_BATCH_MAX))


class WarpVideoRenderer:
    """The embedded renderer, streaming batches of frames into the encoder: memory is bounded for any length. Its
    mouth model (`mouth_model`, RenderOptions') is held by `models`."""

    name = RendererName.embedded.value

    def __init__(self, device: str = "auto", batch_size: str = "auto", crf: int = VideoOptions.crf,
                 mouth_model: str | None = RenderOptions.mouth_model, models: Models | None = None):
        self.device, self.batch_size, self.crf = device, str(batch_size), crf
        self.mouth_model, self.models = mouth_model, models or Models()

    def render(self, portrait: Portrait, targets: FaceTargets, fps: float, output: Path, audio: AudioTrack | None,
               reporter: Reporter, frames_dir: Path | None = None) -> dict:
        from a2pcli.device import JobEstimate, preflight
        from a2pcli.encode import VideoWriter
        from a2pcli.render import WarpRenderer

        t0 = time.perf_counter()
        n = len(targets)
        h, w = portrait.image.shape[:2]
        per_frame = bytes_per_frame((h, w), portrait.face.scale)
        fixed = h * w * 16  # the portrait and the frames' staging on the device
        # an explicit --batch-size must fit; with auto, one frame must, and the batch grows into free memory
        need = per_frame * (int(self.batch_size) if self.batch_size != "auto" else 1) + fixed
        choice = preflight(self.device, JobEstimate("render", vram_bytes=need))
        batch = plan_batch(self.batch_size, choice.device, per_frame)
        vram = per_frame * batch + fixed if choice.device.startswith("cuda") else 0
        reporter.info(f"device: {choice.device} ({choice.name}); {choice.reason}; batches of {batch} frames"
                      + (f", about {vram / 1e9:.1f} GB of GPU memory" if vram else ""), once=True)

        mouth = self.models.mouth(self.mouth_model, choice.device)
        renderer = WarpRenderer(portrait.image, portrait.face, targets, device=choice.device, mouth=mouth)
        t_setup = time.perf_counter() - t0
        reporter.stage("render", total=n)
        t1 = time.perf_counter()
        with VideoWriter(output, (w, h), fps, crf=self.crf, audio=audio, frames_dir=frames_dir) as writer:
            with contextlib.closing(renderer.render_batches(targets, batch)) as batches:  # stopped at once on errors
                for frames in batches:
                    writer.write_batch(frames)
                    reporter.advance(len(frames))
        elapsed = time.perf_counter() - t0
        return {
            "frames": n,
            "fps": fps,
            "duration_s": round(n / fps, 3),
            "size": [w, h],
            "device": choice.device,
            "batch_size": batch,
            "vram_estimate_gb": round(vram / 1e9, 2),
            "audio": None if audio is None else str(audio.path),
            "notes": list(renderer.notes),
            "timings_s": {"setup": round(t_setup, 3), "render_and_encode": round(time.perf_counter() - t1, 3)},
            "elapsed_s": round(elapsed, 3),
            "frames_per_s": round(n / max(elapsed, 1e-9), 1),
        }


class DiffusionVideoRenderer:
    """AniPortrait's diffusion renderer (a2pcli.aniportrait.render), its networks held by `models`."""

    name = RendererName.aniportrait.value

    def __init__(self, options, device: str, crf: int, models: Models):
        self.options, self.device, self.crf, self.models = options, device, crf, models

    def render(self, portrait: Portrait, targets: FaceTargets, fps: float, output: Path, audio: AudioTrack | None,
               reporter: Reporter, frames_dir: Path | None = None) -> dict:
        from a2pcli.aniportrait.render import render_video_aniportrait

        return render_video_aniportrait(portrait, targets, fps, output, self.options, device=self.device, crf=self.crf,
                                        frames_dir=frames_dir, audio=audio, reporter=reporter, models=self.models)


def render_frames(portrait: Portrait, targets: FaceTargets, device: str = "cpu", batch: int = CPU_BATCH,
                  mouth_model: str | None = RenderOptions.mouth_model, models: Models | None = None,
                  mouth=None) -> Iterator[np.ndarray]:
    """In-memory rendering with the embedded renderer (evaluation, tests): (B, H, W, 3) uint8 batches.
    The mouth is painted by `mouth` (a loaded mouthnet.MouthModel) or else by `mouth_model` (a registry name or
    a folder; None: the shipped model), loaded through `models`."""
    from a2pcli.render import WarpRenderer

    mouth = mouth or (models or Models()).mouth(mouth_model, device)
    renderer = WarpRenderer(portrait.image, portrait.face, targets, device=device, mouth=mouth)
    yield from renderer.render_batches(targets, batch)
