"""Which device a job runs on, decided before anything heavy loads.

    preflight("auto" | "cpu" | "cuda" | "cuda:N", JobEstimate(...)) -> DeviceChoice
raises a typed error (EnvironmentProblem, InputError) that says what is wrong and what to do,
with the same facts and helpers the doctor uses (`gpu_info`, `gpu_blocker`, `driver_info`,
`cuda_install_command`). torch is imported inside the functions that need it, never at import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from a2pcli.errors import EnvironmentProblem, InputError

ACCEPTED_FORMS = "auto, cpu, cuda, cuda:N"
BYTES_PER_GB = 1e9  # decimal gigabytes, as printed in messages
BYTES_PER_MIB = 1 << 20  # nvidia-smi reports memory in MiB
NVIDIA_SMI_TIMEOUT_S = 10
NVIDIA_SMI_QUERY = "index,name,driver_version,memory.total,memory.free,compute_cap"
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")
NVIDIA_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
TORCH_WHEEL_INDEX = "https://download.pytorch.org/whl/"
# CUDA builds on PyTorch's wheel index (https://pytorch.org/get-started/locally/); the newest one
# the driver supports is suggested, DEFAULT_CUDA_TAG when the driver's CUDA version is unknown.
CUDA_WHEEL_TAGS = ((11, 8), (12, 6), (12, 8), (13, 0))
DEFAULT_CUDA_TAG = "cu126"
CPU_REMEDY = "or use --device cpu"


@dataclass(frozen=True)
class JobEstimate:
    """What a job needs: `vram_bytes` of free GPU memory (checked), `ram_bytes` of RAM (informational)."""

    name: str
    vram_bytes: int
    ram_bytes: int = 0


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" or "cuda:N", ready for torch.device()
    name: str  # human: "NVIDIA H100 80GB HBM3" or "CPU (2 cores)"
    reason: str  # why this device was chosen


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    capability: tuple[int, int]
    arch_supported: bool
    arch_list: tuple[str, ...]
    total_bytes: int
    free_bytes: int

    @property
    def label(self) -> str:
        return f"cuda:{self.index} ({self.name})"


@dataclass(frozen=True)
class DriverInfo:
    """The NVIDIA driver as seen without torch: `source` is "" when no driver was found."""

    source: str = ""
    driver_version: str | None = None
    cuda_version: str | None = None  # highest CUDA the driver supports, from nvidia-smi's header
    gpus: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def found(self) -> bool:
        return bool(self.source)


def format_gb(n_bytes: float) -> str:
    return f"{n_bytes / BYTES_PER_GB:.1f} GB"


def parse_device(spec: str) -> tuple[str, int | None]:
    """"auto" | "cpu" | "cuda" | "cuda:N" (any case) -> ("auto" | "cpu" | "cuda", N or None)."""
    text = str(spec).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, None
    match = re.fullmatch(r"cuda:(\d+)", text)
    if match:
        return "cuda", int(match.group(1))
    raise InputError(f"unknown device {spec!r}", subject="--device", remedy=f"use one of: {ACCEPTED_FORMS}")


# --- the driver, without torch -------------------------------------------------------------------


def _run_nvidia_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _parse_gpu_csv(text: str) -> tuple[dict, ...]:
    gpus = []
    for line in text.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != 6:
            continue
        index, name, driver, total, free, cap = cols
        gpus.append(
            {
                "index": int(index) if index.isdigit() else index,
                "name": name,
                "driver_version": driver,
                "total_bytes": int(float(total) * BYTES_PER_MIB) if _is_number(total) else None,
                "free_bytes": int(float(free) * BYTES_PER_MIB) if _is_number(free) else None,
                "compute_cap": cap,
            }
        )
    return tuple(gpus)


def _is_number(text: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?", text) is not None


def _driver_from_smi() -> DriverInfo | None:
    csv = _run_nvidia_smi(f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits")
    if not csv:
        return None
    gpus = _parse_gpu_csv(csv)
    header = _run_nvidia_smi() or ""
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    driver = gpus[0]["driver_version"] if gpus else None
    return DriverInfo("nvidia-smi", driver, cuda.group(1) if cuda else None, gpus)


def _driver_from_proc() -> DriverInfo | None:
    try:
        text = NVIDIA_PROC_VERSION.read_text()
    except OSError:
        return None
    version = re.search(r"Kernel Module(?: for \S+)?\s+([\d.]+)", text)
    gpus = []
    if NVIDIA_PROC_GPUS.is_dir():
        for info in sorted(NVIDIA_PROC_GPUS.glob("*/information")):
            model = re.search(r"Model:\s*(.+)", info.read_text(errors="replace"))
            gpus.append({"bus_id": info.parent.name, "name": model.group(1).strip() if model else "?"})
    return DriverInfo(str(NVIDIA_PROC_VERSION), version.group(1) if version else None, None, tuple(gpus))


def driver_info() -> DriverInfo:
    """The NVIDIA driver and its GPUs via nvidia-smi, else /proc/driver/nvidia; DriverInfo() if none."""
    return _driver_from_smi() or _driver_from_proc() or DriverInfo()


def cuda_wheel_tag(driver_cuda: str | None) -> str:
    """The PyTorch CUDA wheel tag ("cu126") for a driver that supports CUDA `driver_cuda`: the newest
    build of the same CUDA major at or below it, else the oldest of that major (CUDA's minor-version
    compatibility lets a 12.4 driver run a 12.6 build), else the newest older build."""
    if not driver_cuda:
        return DEFAULT_CUDA_TAG
    try:
        have = tuple(int(p) for p in driver_cuda.split(".")[:2])
    except ValueError:
        return DEFAULT_CUDA_TAG
    same_major = [tag for tag in CUDA_WHEEL_TAGS if tag[0] == have[0]]
    fitting = [tag for tag in same_major if tag <= have] or same_major[:1]  # CUDA minor-version compatibility
    fitting = fitting or [tag for tag in CUDA_WHEEL_TAGS if tag <= have] or [CUDA_WHEEL_TAGS[0]]
    major, minor = fitting[-1]
    return f"cu{major}{minor}"


def cuda_install_command(torch_version: str, driver_cuda: str | None = None) -> str:
    """`pip install torch==<same version> --index-url .../cuXYZ` for the driver's CUDA version."""
    base = torch_version.split("+")[0]
    return f"pip install torch=={base} --index-url {TORCH_WHEEL_INDEX}{cuda_wheel_tag(driver_cuda)}"


# --- CUDA devices, through torch ------------------------------------------------------------------


def arch_supported(capability: tuple[int, int], arch_list: list[str] | tuple[str, ...]) -> bool:
    """Whether kernels built for `arch_list` (torch.cuda.get_arch_list()) run on `capability`:
    an sm_XY of the same major and a lower-or-equal minor (binary compatible), or a PTX
    compute_XY at or below the device's (JIT-compiled by the driver)."""
    major, minor = capability
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
        if not match:
            continue
        kind, a_major, a_minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        if suffix:  # sm_90a and the like run only on exactly that architecture
            if (a_major, a_minor) == (major, minor):
                return True
        elif kind == "sm" and a_major == major and a_minor <= minor:
            return True
        elif kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def visible_cuda_count() -> int:
    """CUDA devices torch can use (0 on a CPU-only build or without a working driver)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_info(index: int) -> GpuInfo:
    """Name, compute capability, arch support and VRAM of CUDA device `index` (initialises CUDA on it)."""
    import torch

    props = torch.cuda.get_device_properties(index)
    capability = (props.major, props.minor)
    arch_list = tuple(torch.cuda.get_arch_list())
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(index, props.name, capability, arch_supported(capability, arch_list), arch_list, total, free)


def gpu_blocker(gpu: GpuInfo, job: JobEstimate | None = None) -> tuple[str, str] | None:
    """(problem, remedy) when `gpu` cannot run `job`: an architecture this torch build lacks, or too
    little free memory. None when it can."""
    if not gpu.arch_supported:
        cap = f"{gpu.capability[0]}.{gpu.capability[1]}"
        built = " ".join(gpu.arch_list) or "no CUDA architectures"
        return (
            f"{gpu.label} has compute capability {cap} (sm_{cap.replace('.', '')}), "
            f"which this torch build does not support (built for {built})",
            f"install a torch build for sm_{cap.replace('.', '')} (see `a2p doctor`), {CPU_REMEDY}",
        )
    if job is not None and job.vram_bytes > gpu.free_bytes:
        return (
            f"{job.name} needs about {format_gb(job.vram_bytes)} of GPU memory, "
            f"{format_gb(gpu.free_bytes)} free on {gpu.label}",
            "close other GPU programs, use a smaller --batch-size, or --device cpu",
        )
    return None


# --- the decision ---------------------------------------------------------------------------------


def _cpu_choice(reason: str) -> DeviceChoice:
    return DeviceChoice("cpu", f"CPU ({os.cpu_count() or 1} cores)", reason)


def _no_cuda_problem(subject: str) -> EnvironmentProblem:
    import torch

    if not torch.version.cuda:
        install = cuda_install_command(torch.__version__, driver_info().cuda_version)
        return EnvironmentProblem(
            f"this torch build is CPU-only (torch {torch.__version__})",
            subject=subject,
            remedy=f"install a CUDA build of torch ({install}), run `a2p doctor`, {CPU_REMEDY}",
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    env = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return EnvironmentProblem(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU",
        subject=subject,
        remedy=f"check the driver with `a2p doctor` or nvidia-smi, and CUDA_VISIBLE_DEVICES{env}, {CPU_REMEDY}",
    )


def _require_cuda(spec: str, index: int | None, job: JobEstimate | None) -> DeviceChoice:
    subject = f"--device {spec}"
    count = visible_cuda_count()
    if count == 0:
        raise _no_cuda_problem(subject)
    index = 0 if index is None else index
    if index >= count:
        known = ", ".join(gpu_info(i).label for i in range(count))
        raise InputError(
            f"no such device; torch sees {count}: {known}", subject=subject, remedy=f"pick one of those, {CPU_REMEDY}"
        )
    gpu = gpu_info(index)
    blocker = gpu_blocker(gpu, job)
    if blocker:
        raise EnvironmentProblem(blocker[0], subject=subject, remedy=blocker[1])
    return DeviceChoice(f"cuda:{index}", gpu.name, f"asked for --device {spec}")


def _auto(job: JobEstimate | None) -> DeviceChoice:
    count = visible_cuda_count()
    if count == 0:
        import torch

        why = "this torch build is CPU-only" if not torch.version.cuda else f"torch has CUDA {torch.version.cuda}"
        return _cpu_choice(f"no CUDA device visible to torch ({why})")
    reasons = []
    for index in range(count):
        gpu = gpu_info(index)
        blocker = gpu_blocker(gpu, job)
        if blocker is None:
            reason = f"first usable CUDA device ({format_gb(gpu.free_bytes)} free)"
            return DeviceChoice(f"cuda:{index}", gpu.name, reason)
        reasons.append(blocker[0])
    return _cpu_choice("; ".join(reasons))


def preflight(spec: str, job: JobEstimate | None = None) -> DeviceChoice:
    """Resolve `--device` before any model loads. "cpu" -> cpu; "cuda[:N]" -> that GPU or a typed
    error saying why not; "auto" -> the first usable GPU, else cpu, with the reason."""
    kind, index = parse_device(spec)
    if kind == "cpu":
        return _cpu_choice("asked for --device cpu")
    if kind == "cuda":
        return _require_cuda(str(spec).strip().lower(), index, job)
    return _auto(job)


def describe(choice: DeviceChoice) -> str:
    """One line for commands to print: "device: cuda:0 (NVIDIA H100 80GB HBM3)"."""
    if choice.device == "cpu":
        return f"device: {choice.name.replace('CPU', 'cpu', 1)}"
    return f"device: {choice.device} ({choice.name})"
