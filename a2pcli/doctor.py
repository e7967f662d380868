"""The doctor: checks that this machine can run a2p, each with a status and a one-line remedy.

    run_checks(output_dir) -> list[Check]   every check; none of them raises
    summarize(checks) -> dict               the `--json` object
    bug_report(checks) -> str               the versions block to paste into a bug report

Each `check_*` function returns a Check (or a list of them) and never raises: an unexpected
exception becomes a "fail" Check that carries the exception text. Heavy modules (torch,
mediapipe, cv2) are imported inside the checks that need them.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from a2pcli import __version__, cache, device, ffmpeg

OK, WARN, FAIL = "ok", "warn", "fail"
KEY_PACKAGES = (
    "torch", "numpy", "mediapipe", "opencv-python-headless", "opencv-contrib-python", "opencv-python",
    "typer", "click", "rich", "diffusers", "librosa", "moviepy", "imageio-ffmpeg", "platformdirs",
)  # fmt: skip
OPENCV_DISTS = ("opencv-python-headless", "opencv-contrib-python", "opencv-python", "opencv-contrib-python-headless")
OPENCV_GUI_DISTS = ("opencv-contrib-python", "opencv-python")
OPENCV_HEADLESS_SPEC = "opencv-python-headless>=4.8,<4.12"  # as in pyproject.toml
MEDIAPIPE_PIN = "0.10.21"  # newest mediapipe that ships its face models in the wheel
MEDIAPIPE_FACE_MODELS = (
    "modules/face_landmark/face_landmark_with_attention.tflite",
    "modules/face_detection/face_detection_short_range.tflite",
)
REQUIRED_ENCODERS = ("libx264", "aac")  # video and audio encoders of every a2p output
FFMPEG_TIMEOUT_S = 30
MIN_RAM_AVAILABLE = 4 * 10**9  # bytes; below this a render is likely to swap or be killed
MIN_DISK_FREE = 2 * 10**9  # bytes, for the cache and for the output
SMOKE_INPUT_SHAPE = (1, 3, 64, 64)  # cuDNN smoke test: one small RGB image...
SMOKE_WEIGHT_SHAPE = (8, 3, 3, 3)  # ...through a 3x3 convolution
CRASH_REMEDY = "run `a2p doctor --json` and include its output in a bug report"
CUDNN_REMEDY = (
    "broken or mismatched cuDNN: reinstall the torch wheel (pip install --force-reinstall torch), "
    "do not mix a system cuDNN into LD_LIBRARY_PATH"
)


@dataclass(frozen=True)
class Check:
    name: str  # stable id: "python", "torch", "gpu0", "cudnn", ..., "model:<name>"
    status: str  # OK | WARN | FAIL
    summary: str  # one line
    remedy: str = ""  # one line; set whenever status is not OK
    data: dict = field(default_factory=dict)  # machine-readable facts


def _crashed(name: str, exc: BaseException) -> Check:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return Check(name, FAIL, f"the check itself failed ({text})", CRASH_REMEDY, {"exception": text})


def never_raises(name: str) -> Callable:
    """Decorator: an exception inside the check becomes a FAIL Check. `name` may use the call's
    positional arguments, str.format style ("gpu{0}")."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                return _crashed(name.format(*args), exc)

        return inner

    return wrap


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --- versions -------------------------------------------------------------------------------------


@never_raises("python")
def check_python() -> Check:
    """Python, a2p, key package versions and the platform: the bug-report block."""
    versions = {dist: _version(dist) for dist in KEY_PACKAGES}
    data = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "a2p": __version__,
        "platform": platform.platform(),
        "os": platform.system(),
        "machine": platform.machine(),
        "packages": versions,
    }
    summary = f"Python {data['python']}, a2p {__version__}, torch {versions['torch'] or 'missing'}"
    needed = [d for d in KEY_PACKAGES if d not in OPENCV_DISTS and versions[d] is None]
    if needed:
        missing = f"{summary}; missing: {', '.join(needed)}"
        return Check("python", WARN, missing, f"pip install {' '.join(needed)}", data)
    return Check("python", OK, summary, "", data)


# --- start-up -------------------------------------------------------------------------------------


def _writable(folder: Path) -> bool:
    """Whether Python could create a file in `folder` (or create the folder inside its nearest parent)."""
    return os.access(nearest_existing(folder), os.W_OK)


@never_raises("bytecode")
def check_bytecode() -> Check:
    """Whether Python keeps torch's compiled bytecode between runs. When it cannot (PYTHONDONTWRITEBYTECODE
    is set, or torch sits in a read-only folder without .pyc files), every a2p start compiles torch's
    2000-odd modules again: 3.5-6 s per start measured on a GPU machine, 1.6-2.2 s with the cache."""
    import importlib.util

    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is None or not spec.origin:
        return Check("bytecode", OK, "not applicable (torch is not installed)", "", {})
    cached = Path(importlib.util.cache_from_source(spec.origin))  # honours PYTHONPYCACHEPREFIX
    data = {"torch_source": spec.origin, "cache_file": str(cached), "cached": cached.is_file(),
            "dont_write_bytecode": bool(sys.dont_write_bytecode), "pycache_prefix": sys.pycache_prefix}
    if data["cached"]:
        return Check("bytecode", OK, "torch's compiled bytecode is cached", "", data)
    if not sys.dont_write_bytecode and _writable(cached.parent):
        return Check("bytecode", OK, "torch's bytecode is cached by its first import", "", data)
    why = ("PYTHONDONTWRITEBYTECODE (or python -B) keeps Python from caching it" if sys.dont_write_bytecode
           else f"{cached.parent} is not writable")
    summary = f"torch's bytecode is not cached and will not be: {why}; every a2p start compiles torch again (seconds)"
    folder = Path(spec.origin).parent
    prefix = "set PYTHONPYCACHEPREFIX to a writable folder (for instance ~/.cache/pycache)"
    if not sys.dont_write_bytecode:
        remedy = prefix
    elif os.access(folder, os.W_OK):
        remedy = f"compile it once: python -m compileall -q -j 0 {folder} (or unset PYTHONDONTWRITEBYTECODE)"
    else:
        remedy = f"unset PYTHONDONTWRITEBYTECODE and {prefix}"
    return Check("bytecode", WARN, summary, remedy, data)


# --- torch, driver, GPUs, cuDNN -------------------------------------------------------------------


def _torch_data(torch, drv: device.DriverInfo) -> dict:
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_count": device.visible_cuda_count(),
        "driver_source": drv.source or None,
        "driver_version": drv.driver_version,
        "driver_cuda": drv.cuda_version,
        "driver_gpus": list(drv.gpus),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _torch_cannot_see(torch, drv: device.DriverInfo) -> tuple[str, str]:
    seen = f"the driver {drv.driver_version or ''} sees {len(drv.gpus) or 'a'} GPU(s)".replace("  ", " ")
    install = device.cuda_install_command(torch.__version__, drv.cuda_version)
    if not torch.version.cuda:
        summary = f"{seen} but torch {torch.__version__} is CPU-only: runs stay on the CPU (the classic 'GPU at 1-2%')"
        return summary, f"install the CUDA build: {install}"
    summary = f"{seen} but torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use it"
    remedy = f"check CUDA_VISIBLE_DEVICES and nvidia-smi; if the driver predates CUDA {torch.version.cuda}: {install}"
    return summary, remedy


@never_raises("torch")
def check_torch() -> Check:
    """The torch build (CPU or CUDA) against the GPUs the NVIDIA driver sees."""
    import torch

    drv = device.driver_info()
    data = _torch_data(torch, drv)
    build = f"torch {torch.__version__} " + (f"(CUDA {torch.version.cuda})" if torch.version.cuda else "(CPU build)")
    if data["device_count"] > 0:
        return Check("torch", OK, f"{build}, {data['device_count']} GPU(s) visible to torch", "", data)
    if drv.found:
        summary, remedy = _torch_cannot_see(torch, drv)
        return Check("torch", WARN, summary, remedy, data)
    return Check("torch", OK, f"{build}; CPU only (no NVIDIA driver found)", "", data)


def _torch_driver_version(torch) -> str | None:
    try:
        raw = torch._C._cuda_getDriverVersion()  # e.g. 12040 = CUDA 12.4
    except Exception:
        return None
    return f"CUDA {raw // 1000}.{raw % 1000 // 10}" if raw else None


@never_raises("gpu{0}")
def check_gpu(index: int, driver_version: str | None = None) -> Check:
    """One CUDA device: name, capability, whether this torch build has kernels for it, VRAM."""
    import torch

    gpu = device.gpu_info(index)
    cap = f"{gpu.capability[0]}.{gpu.capability[1]}"
    data = {
        "index": index,
        "name": gpu.name,
        "capability": cap,
        "arch_supported": gpu.arch_supported,
        "arch_list": list(gpu.arch_list),
        "driver_version": driver_version or _torch_driver_version(torch),
        "total_bytes": gpu.total_bytes,
        "free_bytes": gpu.free_bytes,
    }
    from a2pcli.aniportrait.render import vram_estimate  # numpy only at import: no torch, no diffusers

    need, need_low = vram_estimate(512, 512, "fp16"), vram_estimate(512, 512, "fp16", low_vram=True)
    data["aniportrait_512_bytes"] = need
    data["aniportrait_512_low_vram_bytes"] = need_low
    fits = ("fits" if gpu.free_bytes >= need else "fits with --low-vram" if gpu.free_bytes >= need_low
            else "does not fit")
    summary = (
        f"{gpu.name}, sm_{cap.replace('.', '')}, {device.format_gb(gpu.free_bytes)} free of "
        f"{device.format_gb(gpu.total_bytes)}, driver {data['driver_version'] or '?'}; the aniportrait renderer at "
        f"512x512 needs about {device.format_gb(need)} ({device.format_gb(need_low)} with --low-vram): {fits}"
    )
    blocker = device.gpu_blocker(gpu)
    if blocker:
        return Check(f"gpu{index}", FAIL, blocker[0], blocker[1], data)
    return Check(f"gpu{index}", OK, summary, "", data)


def check_gpus() -> list[Check]:
    """One Check per CUDA device visible to torch (none on a CPU-only machine)."""
    try:
        count = device.visible_cuda_count()
        driver = device.driver_info().driver_version if count else None
    except Exception as exc:
        return [_crashed("gpu", exc)]
    return [check_gpu(i, driver) for i in range(count)]


def _smoke_conv(torch, index: int) -> str:
    """"ok", or why a small cuDNN convolution on cuda:`index` failed."""
    dev = torch.device(f"cuda:{index}")
    try:
        with torch.backends.cudnn.flags(enabled=True):
            x = torch.randn(*SMOKE_INPUT_SHAPE, device=dev)
            w = torch.randn(*SMOKE_WEIGHT_SHAPE, device=dev)
            y = torch.nn.functional.conv2d(x, w, padding=1)
            torch.cuda.synchronize(dev)
        return "ok" if bool(torch.isfinite(y).all()) else "non-finite output"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".replace("\n", " ")


@never_raises("cudnn")
def check_cudnn() -> Check:
    """cuDNN's version and a real convolution on each CUDA device."""
    import torch

    count = device.visible_cuda_count()
    if count == 0:
        return Check("cudnn", OK, "not applicable (no CUDA device)", "", {"version": None})
    version = torch.backends.cudnn.version()
    results = {f"cuda:{i}": _smoke_conv(torch, i) for i in range(count)}
    data = {"version": version, "available": torch.backends.cudnn.is_available(), "conv": results}
    bad = {dev: why for dev, why in results.items() if why != "ok"}
    if version is None or bad:
        why = "; ".join(f"{d}: {w}" for d, w in bad.items()) or "cuDNN is not available to torch"
        return Check("cudnn", FAIL, f"cuDNN {version}: {why}", CUDNN_REMEDY, data)
    return Check("cudnn", OK, f"cuDNN {version}, 3x3 convolution ok on {', '.join(results)}", "", data)


@never_raises("compile_cache")
def check_compile_cache() -> Check:
    """Whether `--compile` (the diffusion renderer's compiled denoiser) will find its kernels in the
    a2p cache for this torch and GPU, or compile them first (minutes, once per machine)."""
    if device.visible_cuda_count() == 0:
        return Check("compile_cache", OK, "not applicable (no CUDA device: --compile runs on a GPU only)", "",
                     {"warm": None})
    from a2pcli.aniportrait.runtime import compile_cache_state

    state = compile_cache_state()
    if state["warm"]:
        done = ", ".join(f"{r['size'][0]}x{r['size'][1]} batch {r.get('window_batch', 1)}" for r in state["renders"])
        return Check("compile_cache", OK, f"--compile is warm for this torch and GPU ({done}): compiled kernels "
                     f"load from {state['dir']}", "", state)
    return Check("compile_cache", WARN, "--compile is cold for this torch and GPU: the first compiled render "
                 "compiles the denoiser for a couple of minutes, then later processes load it from the cache",
                 "run one render with --compile ahead of time (for instance after installing), or render "
                 "without --compile", state)


# --- memory and disk ------------------------------------------------------------------------------


def memory_bytes() -> tuple[int, int]:
    """(total, available) RAM in bytes: /proc/meminfo, else os.sysconf."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = {k: int(v.split()[0]) for k, v in fields.items() if k in ("MemTotal", "MemAvailable")}
        return kib["MemTotal"] * 1024, kib["MemAvailable"] * 1024
    except (OSError, KeyError, ValueError, IndexError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


@never_raises("ram")
def check_ram() -> Check:
    total, available = memory_bytes()
    data = {"total_bytes": total, "available_bytes": available}
    summary = f"{device.format_gb(available)} available of {device.format_gb(total)}"
    if available < MIN_RAM_AVAILABLE:
        remedy = f"close other programs: a2p wants at least {device.format_gb(MIN_RAM_AVAILABLE)} available"
        return Check("ram", WARN, summary, remedy, data)
    return Check("ram", OK, summary, "", data)


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (the cache may not be created yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_check(name: str, path: Path, remedy: str) -> Check:
    where = nearest_existing(path)
    free = shutil.disk_usage(where).free
    data = {"path": str(path), "measured_at": str(where), "free_bytes": free}
    summary = f"{device.format_gb(free)} free at {path}"
    if free < MIN_DISK_FREE:
        return Check(name, WARN, summary, remedy, data)
    return Check(name, OK, summary, "", data)


@never_raises("disk_cache")
def check_disk_cache() -> Check:
    remedy = f"free space there, or point {cache.CACHE_ENV} at a disk with {device.format_gb(MIN_DISK_FREE)} free"
    return _disk_check("disk_cache", cache.cache_dir(), remedy)


@never_raises("disk_output")
def check_disk_output(output_dir: Path | None = None) -> Check:
    remedy = f"free space there, or write the output to a disk with {device.format_gb(MIN_DISK_FREE)} free"
    return _disk_check("disk_output", Path(output_dir) if output_dir else Path.cwd(), remedy)


# --- ffmpeg, mediapipe, opencv --------------------------------------------------------------------


def _ffmpeg_output(exe: str, *args: str) -> str:
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"`ffmpeg {' '.join(args)}` exited {proc.returncode}")
    return proc.stdout


@never_raises("ffmpeg")
def check_ffmpeg() -> Check:
    """imageio-ffmpeg's binary runs and has the libx264 and AAC encoders."""
    try:
        exe = ffmpeg.exe()
        banner = _ffmpeg_output(exe, "-version")
        encoders = _ffmpeg_output(exe, "-hide_banner", "-encoders")
    except (ImportError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return Check("ffmpeg", FAIL, f"ffmpeg does not run ({exc})", ffmpeg.REMEDY, {"error": str(exc)})
    found = re.search(r"ffmpeg version (\S+)", banner)
    version = f"ffmpeg {found.group(1) if found else '(unknown version)'}"
    missing = [e for e in REQUIRED_ENCODERS if not re.search(rf"^\s*\S+\s+{re.escape(e)}\s", encoders, re.M)]
    data = {"exe": exe, "version": version, "missing_encoders": missing}
    if missing:
        return Check("ffmpeg", FAIL, f"{version}: no {', '.join(missing)} encoder", ffmpeg.REMEDY, data)
    return Check("ffmpeg", OK, f"{version} with {', '.join(REQUIRED_ENCODERS)}", "", data)


@never_raises("mediapipe")
def check_mediapipe() -> Check:
    """mediapipe imports, has face_mesh, and ships its face model files."""
    remedy = f"pip install mediapipe=={MEDIAPIPE_PIN} (0.10.30+ ship no face models)"
    try:
        import mediapipe

        mediapipe.solutions.face_mesh  # noqa: B018 - the attribute access is the check
    except Exception as exc:  # ImportError, AttributeError, a broken native library
        return Check("mediapipe", FAIL, f"mediapipe cannot be imported ({exc})", remedy, {"error": str(exc)})
    folder = Path(mediapipe.__file__).parent
    missing = [rel for rel in MEDIAPIPE_FACE_MODELS if not (folder / rel).is_file()]
    version = getattr(mediapipe, "__version__", None) or _version("mediapipe")
    data = {"version": version, "folder": str(folder), "missing_models": missing}
    if missing:
        return Check("mediapipe", FAIL, f"mediapipe {version} lacks {', '.join(missing)}", remedy, data)
    return Check("mediapipe", OK, f"mediapipe {version} with its face models", "", data)


def opencv_gui(build_info: str) -> str | None:
    """The GUI backend OpenCV was built with ("QT5", "GTK3", ...) or None for a headless build."""
    match = re.search(r"^\s*GUI:\s*(\S+)", build_info, re.M)
    if match:
        return None if match.group(1).upper() == "NONE" else match.group(1)
    gui = re.search(r"^\s*(QT|GTK\+?[\d.]*):\s*YES", build_info, re.M)
    return gui.group(1) if gui else None


def _libgl_loaded() -> bool | None:
    try:
        return "libGL" in Path("/proc/self/maps").read_text()
    except OSError:
        return None


def _opencv_remedy(dists: dict) -> str:
    gui = [d for d in OPENCV_GUI_DISTS if dists.get(d)] or ["opencv-contrib-python"]
    headless = dists.get("opencv-python-headless")
    target = f"opencv-python-headless=={headless}" if headless else f'"{OPENCV_HEADLESS_SPEC}"'
    return f"pip uninstall -y {' '.join(gui)} && pip install --force-reinstall --no-deps {target}"


@never_raises("opencv")
def check_opencv() -> Check:
    """cv2 imports; warn when the loaded build is a GUI one (it needs libGL, absent on servers)."""
    dists = {d: _version(d) for d in OPENCV_DISTS}
    try:
        import cv2
    except Exception as exc:
        return Check("opencv", FAIL, f"cv2 cannot be imported ({exc})", _opencv_remedy(dists), {"error": str(exc)})
    gui = opencv_gui(cv2.getBuildInformation())
    installed = [d for d, v in dists.items() if v]
    data = {"version": cv2.__version__, "gui": gui, "distributions": dists, "libGL_loaded": _libgl_loaded()}
    if gui:
        summary = f"cv2 {cv2.__version__} is a GUI build ({gui}, needs libGL); installed: {', '.join(installed)}"
        return Check("opencv", WARN, summary, _opencv_remedy(dists), data)
    return Check("opencv", OK, f"cv2 {cv2.__version__}, headless build ({', '.join(installed)})", "", data)


# --- models ---------------------------------------------------------------------------------------


@never_raises("model:{0.name}")
def check_model(entry) -> Check:
    """One registry model: present, missing, or its files do not match their hashes."""
    from a2pcli import registry

    statuses = registry.check_entry(entry)
    state = registry.entry_status(statuses)
    bad = [f"{s.file.path} {s.status} {s.detail}".strip() for s in statuses if s.status != registry.PRESENT]
    data = {"kind": entry.kind, "status": state, "folder": str(entry.folder()), "problems": bad, "size": entry.size}
    name = f"model:{entry.name}"
    if state == registry.PRESENT:
        return Check(name, OK, f"{entry.kind}, present in {entry.folder()}", "", data)
    if state == registry.MISSING:
        if entry.embedded:
            return Check(name, FAIL, f"embedded model missing: {'; '.join(bad)}", "reinstall a2p", data)
        missing = [s for s in statuses if s.status != registry.PRESENT]
        if len(missing) == len(statuses):  # never pulled: no need to list every file
            what = f"not pulled yet (none of its {len(statuses)} files are in the cache)"
        else:
            what = f"not complete in the cache: {'; '.join(bad)}"
        return Check(name, WARN, what, f"a2p models pull {entry.name}", data)
    remedy = "reinstall a2p" if entry.embedded else f"a2p models verify {entry.name}, then a2p models pull {entry.name}"
    return Check(name, FAIL, f"hash mismatch: {'; '.join(bad)}", remedy, data)


def check_models() -> list[Check]:
    """One Check per registry model (none when the registry is empty)."""
    from a2pcli import registry
    from a2pcli.errors import A2PError

    try:
        entries = registry.load_registry()
    except A2PError as exc:
        return [Check("models", FAIL, exc.message, exc.remedy or "reinstall a2p", {"error": exc.one_line()})]
    except Exception as exc:
        return [_crashed("models", exc)]
    return [check_model(entry) for entry in entries.values()]


# --- all of it ------------------------------------------------------------------------------------


def run_checks(output_dir: Path | None = None) -> list[Check]:
    """Every check, in the order a reader wants them: versions, compute, memory/disk, tools, models."""
    return [
        check_python(),
        check_bytecode(),
        check_torch(),
        *check_gpus(),
        check_cudnn(),
        check_compile_cache(),
        check_ram(),
        check_disk_cache(),
        check_disk_output(output_dir),
        check_ffmpeg(),
        check_mediapipe(),
        check_opencv(),
        *check_models(),
    ]


def summarize(checks: list[Check]) -> dict:
    """The `--json` object: ok (no check failed), the a2p version, every check as a dict."""
    return {
        "ok": not any(c.status == FAIL for c in checks),
        "a2p_version": __version__,
        "checks": [asdict(c) for c in checks],
    }


def bug_report(checks: list[Check]) -> str:
    """Versions and platform, one `key: value` a line, from the python and torch checks."""
    facts = {c.name: c.data for c in checks}
    py = facts.get("python", {})
    lines = [f"a2p: {__version__}", f"python: {py.get('python', platform.python_version())}"]
    lines.append(f"platform: {py.get('platform', platform.platform())}")
    lines += [f"{dist}: {ver or 'not installed'}" for dist, ver in py.get("packages", {}).items()]
    torch_facts = facts.get("torch", {})
    if torch_facts:
        lines.append(f"torch cuda: {torch_facts.get('cuda') or 'none (CPU build)'}")
        lines.append(f"nvidia driver: {torch_facts.get('driver_version') or 'none found'}")
    lines += [f"{c.name}: {c.data.get('name')} sm_{c.data.get('capability', '?').replace('.', '')}" for c in checks
              if c.name.startswith("gpu") and "name" in c.data]  # fmt: skip
    return "\n".join(lines)
