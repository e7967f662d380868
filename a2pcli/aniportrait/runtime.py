"""GPU execution settings of the diffusion renderer: measured options that change speed, not results
beyond float rounding (benchmarks/README.md has the figures).

    speed_settings(models, channels_last=False, cudnn_benchmark=False, compile=False, attention="auto")
    compile_denoiser(models)            torch.compile, its caches inside a2p's cache directory
    compile_cache_state() -> dict       where that cache is for this torch and GPU, and whether it is warm
    mark_compile_warm(info)             record that a compiled render finished (what `a2p doctor` reads)
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
COMPILE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's cache (generated kernels, FX graphs); triton's goes inside
WARM_FILE = "warm.json"


def speed_settings(models, channels_last: bool = False, cudnn_benchmark: bool = False, compile: bool = False,
                   attention: str = "auto") -> None:
    """Optional cuDNN autotuning (off: it gains 1 % per window-step on an H100 but its searches cost
    several seconds per process, 5 s for the VAE decoder's shapes alone, more than a 90-frame render
    gains), optional `torch.compile` of the denoiser (see `compile_denoiser`), optionally one
    scaled-dot-product attention backend first (`attention`: "auto" leaves torch's choice) and,
    optionally, NHWC weights for the convolution-heavy networks (measured 11 % *slower* uncompiled on
    an H100 with torch 2.11: the per-frame GroupNorms and the motion modules' reshapes convert back
    and forth, so it is off by default)."""
    import torch

    if models.device.type != "cuda":
        return
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if attention != "auto":
        prefer_attention(attention)
    if channels_last:
        for net in (models.denoiser, models.reference_unet, models.pose_guider, models.vae):
            net.to(memory_format=torch.channels_last)
    if compile:
        compile_denoiser(models)


def prefer_attention(name: str) -> None:
    """Let torch's SDPA use only backend `name` where it applies, with the memory-efficient kernel
    and the math path as fallbacks for the shapes it does not take (process-wide switches)."""
    import torch

    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r} ({', '.join(ATTENTION_BACKENDS)})")
    b = torch.backends.cuda
    b.enable_cudnn_sdp(name in ("cudnn", "auto"))
    b.enable_flash_sdp(name in ("flash", "auto"))
    b.enable_mem_efficient_sdp(name != "math")
    b.enable_math_sdp(True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def compile_cache_dir() -> Path:
    """`<a2p cache>/compile/torch-<version>-<GPU>`: compiled kernels depend on both."""
    import torch

    from a2pcli.cache import cache_dir

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return cache_dir() / "compile" / _slug(f"torch-{torch.__version__}-{gpu}")


def use_compile_cache() -> Path:
    """Point inductor's on-disk caches (FX graphs, generated Triton kernels, autotuning results) at
    a2p's cache directory unless the user chose a folder with TORCHINDUCTOR_CACHE_DIR; returns the
    folder in use. Must run before the first compilation of the process."""
    folder = os.environ.get(COMPILE_ENV)
    if not folder:
        folder = str(compile_cache_dir())
        Path(folder).mkdir(parents=True, exist_ok=True)
        os.environ[COMPILE_ENV] = folder
    return Path(folder)


def compile_denoiser(models, mode: str | None = None) -> int:
    """`torch.compile` the denoising UNet block by block (regional compilation: each down, mid and up
    block is its own graph, so compiling takes a fraction of a whole-model compile and a graph break
    in one block cannot spread), with its caches in a2p's cache directory so that the compilation is
    paid once per machine. Shapes are static: one compile per window length and batch, paid by the
    first window. Returns the number of compiled blocks."""
    use_compile_cache()
    unet = models.denoiser.unet
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    import torch

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(blocks))
    for block in blocks:
        block.compile(dynamic=False, mode=mode)
    return len(blocks)


def compile_cache_state() -> dict:
    """{"dir", "warm", "renders": [...]} for this torch and GPU: warm when a compiled render finished
    with the cache in that folder (`mark_compile_warm`)."""
    folder = Path(os.environ.get(COMPILE_ENV) or compile_cache_dir())
    marker = folder / WARM_FILE
    renders = []
    if marker.is_file():
        try:
            renders = json.loads(marker.read_text()).get("renders", [])
        except (OSError, ValueError):
            renders = []
    return {"dir": str(folder), "warm": bool(renders), "renders": renders}


def mark_compile_warm(info: dict) -> None:
    """Record in the cache folder that a compiled render with these settings (size, window frames,
    batch) finished: the kernels for them are on disk. Atomic (temp file + rename)."""
    from a2pcli.outputs import temp_path_for

    folder = use_compile_cache()
    marker = folder / WARM_FILE
    state = compile_cache_state()
    entry = {k: info[k] for k in sorted(info)}
    renders = [r for r in state["renders"] if {k: r.get(k) for k in entry if k != "when"} !=
               {k: v for k, v in entry.items() if k != "when"}]
    renders.append({**entry, "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    tmp = temp_path_for(marker)
    tmp.write_text(json.dumps({"renders": renders}, indent=1))
    os.replace(tmp, marker)
