"""How fast this GPU runs the diffusion renderer's kernels at AniPortrait's shapes (512x512, fp16): attention
(each SDPA backend; head dimension 40 at the finest level, 80 and 160 below it; keys doubled by the reference
bank), the UNet's linear layers, a matrix product for the peak, and the finest level's 3x3 convolution
(NCHW and channels-last). With the work per window-step (benchmarks/README.md) these rates give the floor of a
window-step's time for the exact (fp16) path.

    python benchmarks/bench_unet_kernels.py --device cuda --out kernels.json
    python benchmarks/bench_unet_kernels.py --device cpu --tiny --out kernels.json   # tiny shapes: a smoke test

Prints one JSON line per case (ms per call, TFLOP/s); CUDA events, --warmup then --iters calls each.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--iters", type=int, default=20)
ap.add_argument("--out", default="kernels.json")
ap.add_argument("--no-math", action="store_true", help="skip the MATH backend")
args = ap.parse_args()

dev = torch.device(args.device)
cuda = dev.type == "cuda"
dtype = torch.float16 if cuda else torch.float32
results: list[dict] = []


def emit(rec: dict) -> None:
    results.append(rec)
    print(json.dumps(rec), flush=True)


def timeit(fn) -> float:
    """Mean ms per call."""
    for _ in range(args.warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(args.iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / args.iters
    t = time.perf_counter()
    for _ in range(args.iters):
        fn()
    return (time.perf_counter() - t) * 1e3 / args.iters


def run_case(rec: dict, flops: float, fn) -> None:
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ms = timeit(fn)
        rec.update(ms=round(ms, 4), tflops=round(flops / (ms * 1e-3) / 1e12, 1))
        if cuda:
            rec["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot take the shape is reported and skipped
        rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    emit(rec)
    if cuda:
        torch.cuda.empty_cache()


info = {"case": "info", "torch": torch.__version__, "device": str(dev), "dtype": str(dtype)}
if cuda:
    info.update(gpu=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version(),
                cuda=torch.version.cuda)
emit(info)

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
if args.no_math:
    del BACKENDS["math"]

B = 32
shapes = [(B, 8, 4096, 4096, 40), (B, 8, 4096, 8192, 40), (B, 8, 4096, 4096, 64), (B, 8, 4096, 8192, 64),
          (B, 8, 1024, 1024, 80), (B, 8, 1024, 2048, 80), (B, 8, 256, 256, 160), (B, 8, 256, 512, 160)]
if args.tiny:
    shapes = [(2, 2, 64, 64, 40), (2, 2, 64, 128, 40), (2, 2, 32, 32, 80)]

g = torch.Generator(device=dev).manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, device=dev, dtype=dtype, generator=g)


def sdpa_in(backend, q, k, v, scale=None):
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


for (b, h, lq, lk, d) in shapes:
    q, k, v = rnd(b, h, lq, d), rnd(b, h, lk, d), rnd(b, h, lk, d)
    flops = 4.0 * b * h * lq * lk * d
    for name, be in BACKENDS.items():
        if name == "math" and b * h * lq * lk * 4 > 40e9:
            emit({"case": "sdpa", "backend": name, "B": b, "H": h, "Lq": lq, "Lk": lk, "d": d, "error": "skipped (size)"})
            continue
        run_case({"case": "sdpa", "backend": name, "B": b, "H": h, "Lq": lq, "Lk": lk, "d": d}, flops,
                 lambda be=be: sdpa_in(be, q, k, v))
    del q, k, v

# d=40 zero-padded to 48 and 64 by hand, the scale passed as 1/sqrt(40): the same result mathematically
pad_shapes = [(B, 8, 4096, 4096), (B, 8, 4096, 8192)] if not args.tiny else [(2, 2, 64, 128)]
for (b, h, lq, lk) in pad_shapes:
    d = 40
    q, k, v = rnd(b, h, lq, d), rnd(b, h, lk, d), rnd(b, h, lk, d)
    flops = 4.0 * b * h * lq * lk * d  # useful FLOPs (d=40): tflops below are effective
    scale = 1 / math.sqrt(d)
    with sdpa_kernel(SDPBackend.MATH) if not cuda else sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale) if not cuda else \
            F.scaled_dot_product_attention(q, k, v, scale=scale).float()
    for dp in (48, 64):
        qp, kp, vp = (F.pad(t, (0, dp - d)) for t in (q, k, v))
        for name, be in BACKENDS.items():
            if name == "math":
                continue
            rec = {"case": "sdpa_padded", "backend": name, "B": b, "H": h, "Lq": lq, "Lk": lk, "d": d, "d_pad": dp}
            try:
                out = sdpa_in(be, qp, kp, vp, scale)[..., :d]
                rec["max_abs_diff_vs_d40"] = float((out.float() - ref).abs().max())
                del out
            except Exception as exc:  # noqa: BLE001
                rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                emit(rec)
                continue
            # kernel alone on pre-padded inputs
            run_case(dict(rec, timing="kernel_on_padded"), flops, lambda be=be: sdpa_in(be, qp, kp, vp, scale))
            # pad + kernel + slice (contiguous), what a model would pay
            run_case(dict(rec, timing="pad_kernel_slice"), flops,
                     lambda be=be, dp=dp: sdpa_in(be, *(F.pad(t, (0, dp - d)) for t in (q, k, v)),
                                                  scale)[..., :d].contiguous())
        del qp, kp, vp
    del q, k, v, ref

# matrix products and the UNet-like linears
mm = [("matmul_peak", 8192, 8192, 8192), ("geglu_proj", 131072, 320, 2560), ("ff_out", 131072, 1280, 320)]
if args.tiny:
    mm = [("matmul_peak", 256, 256, 256), ("geglu_proj", 512, 32, 256), ("ff_out", 512, 128, 32)]
for name, m, kk, n in mm:
    a, w = rnd(m, kk), rnd(kk, n)
    run_case({"case": name, "M": m, "K": kk, "N": n, "dtype": str(dtype)}, 2.0 * m * kk * n, lambda: a @ w)
    if cuda:
        ab, wb = a.bfloat16(), w.bfloat16()
        run_case({"case": name, "M": m, "K": kk, "N": n, "dtype": "torch.bfloat16"}, 2.0 * m * kk * n,
                 lambda: ab @ wb)
        del ab, wb
    del a, w

# conv 3x3 320->320 on (32,320,64,64), NCHW and channels_last (cudnn.benchmark on)
torch.backends.cudnn.benchmark = True
n, c, hw = (32, 320, 64) if not args.tiny else (2, 16, 16)
x = rnd(n, c, hw, hw)
conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dev, dtype)
flops = 2.0 * n * c * hw * hw * c * 9
with torch.no_grad():
    run_case({"case": "conv3x3", "layout": "NCHW", "shape": [n, c, hw, hw]}, flops, lambda: conv(x))
    xc, convc = x.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    run_case({"case": "conv3x3", "layout": "channels_last", "shape": [n, c, hw, hw]}, flops, lambda: convc(xc))

with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
print(f"wrote {len(results)} records to {args.out}", flush=True)
