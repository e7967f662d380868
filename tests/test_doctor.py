"""`a2p doctor` and the device preflight, on the real components of this machine (no torch mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from a2pcli import device, doctor
from a2pcli.device import DeviceChoice, JobEstimate, parse_device, preflight
from a2pcli.errors import EnvironmentProblem, InputError

BASE_CHECKS = ("python", "bytecode", "torch", "cudnn", "ram", "disk_cache", "disk_output", "ffmpeg", "mediapipe", "opencv")
STATUSES = {"ok", "warn", "fail"}
ABSURD_VRAM = 10 * 10**12  # 10 TB: more than any GPU has
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device visible to torch")


def _run_doctor(tmp_path, *args):
    env = {**os.environ, "A2P_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "a2pcli", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def doctor_json(tmp_path_factory):
    proc = _run_doctor(tmp_path_factory.mktemp("doctor"), "--json", "--output-dir", ".")
    return proc, json.loads(proc.stdout)


# --- the CLI --------------------------------------------------------------------------------------


def test_json_is_one_object_with_every_check(doctor_json):
    proc, report = doctor_json
    assert proc.returncode == (0 if report["ok"] else 1), proc.stderr
    names = [c["name"] for c in report["checks"]]
    for name in BASE_CHECKS:
        assert name in names
    assert report["ok"] == all(c["status"] != "fail" for c in report["checks"])
    assert report["a2p_version"]


def test_json_checks_have_status_and_remedy(doctor_json):
    _, report = doctor_json
    for check in report["checks"]:
        assert check["status"] in STATUSES, check
        assert check["summary"] and "\n" not in check["summary"]
        if check["status"] != "ok":
            assert check["remedy"], check
        assert isinstance(check["data"], dict)


def test_json_ffmpeg_and_mediapipe_work_here(doctor_json):
    _, report = doctor_json
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["ffmpeg"]["status"] == "ok", by_name["ffmpeg"]
    assert by_name["mediapipe"]["status"] == "ok", by_name["mediapipe"]
    assert by_name["python"]["data"]["packages"]["torch"] == torch.__version__
    assert by_name["torch"]["data"]["version"] == torch.__version__


def test_json_cache_disk_check_uses_the_cache_env(doctor_json, tmp_path):
    _, report = doctor_json
    disk = next(c for c in report["checks"] if c["name"] == "disk_cache")
    assert disk["data"]["path"].endswith("cache")
    assert disk["data"]["free_bytes"] > 0


def test_human_output_has_table_and_bug_report(tmp_path):
    proc = _run_doctor(tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    for name in BASE_CHECKS:
        assert name in proc.stdout
    assert "Paste this into bug reports" in proc.stdout
    assert f"torch: {torch.__version__}" in proc.stdout


# --- the checks as library functions --------------------------------------------------------------


def test_run_checks_returns_checks():
    checks = doctor.run_checks()
    assert all(isinstance(c, doctor.Check) for c in checks)
    summary = doctor.summarize(checks)
    json.dumps(summary)  # serialisable as is
    assert len(summary["checks"]) == len(checks)


def test_a_crashing_check_becomes_a_fail(monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor.ffmpeg, "exe", broken)
    check = doctor.check_ffmpeg()
    assert check.status == "fail" and "boom" in check.summary
    assert "imageio-ffmpeg" in check.remedy

    monkeypatch.setattr(doctor, "memory_bytes", lambda: 1 / 0)
    check = doctor.check_ram()
    assert (check.name, check.status) == ("ram", "fail")
    assert "ZeroDivisionError" in check.summary and check.remedy


def test_driver_gpu_with_cpu_torch_warns_with_the_wheel(monkeypatch):
    """A GPU the driver sees but torch cannot use: the classic 'GPU at 1-2 %'."""
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    gpus = ({"index": 0, "name": "NVIDIA L4", "driver_version": "550.54", "compute_cap": "8.9"},)
    monkeypatch.setattr(device, "driver_info", lambda: device.DriverInfo("nvidia-smi", "550.54", "12.4", gpus))
    check = doctor.check_torch()
    assert check.status == "warn"
    if not torch.version.cuda:
        base = torch.__version__.split("+")[0]
        assert f"pip install torch=={base} --index-url https://download.pytorch.org/whl/cu126" in check.remedy


def test_low_disk_warns(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "MIN_DISK_FREE", 10**18)
    check = doctor.check_disk_output(tmp_path / "not" / "yet")
    assert check.status == "warn" and check.remedy
    assert check.data["measured_at"] == str(tmp_path)


def test_cudnn_not_applicable_without_cuda():
    check = doctor.check_cudnn()
    if not torch.cuda.is_available():
        assert (check.status, check.summary) == ("ok", "not applicable (no CUDA device)")


def test_bytecode_check_here_and_when_python_may_not_cache(monkeypatch, tmp_path):
    """torch compiled again at every start (PYTHONDONTWRITEBYTECODE, read-only site-packages) is a warning
    with the fix; a cached or cacheable torch is fine."""
    import importlib.util

    assert doctor.check_bytecode().status == "ok"  # this machine caches bytecode
    cache_file = tmp_path / "torch" / "__pycache__" / "__init__.cpython-311.pyc"
    monkeypatch.setattr(importlib.util, "cache_from_source", lambda src: str(cache_file))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    check = doctor.check_bytecode()
    assert check.status == "warn" and "PYTHONDONTWRITEBYTECODE" in check.summary
    assert "compileall" in check.remedy and "torch" in check.remedy
    monkeypatch.setattr(doctor, "_writable", lambda folder: False)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    check = doctor.check_bytecode()
    assert check.status == "warn" and "not writable" in check.summary and "PYTHONPYCACHEPREFIX" in check.remedy
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"")
    assert doctor.check_bytecode().status == "ok"


def test_opencv_gui_parsing():
    assert doctor.opencv_gui("  GUI:                           NONE\n") is None
    assert doctor.opencv_gui("  GUI:                           QT5\n    QT: YES\n") == "QT5"
    assert doctor.opencv_gui("    GTK+:   YES (ver 3.24)\n") == "GTK+"


def test_model_checks_follow_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("A2P_CACHE_DIR", str(tmp_path))
    checks = doctor.check_models()
    for check in checks:
        assert check.name.startswith("model:")
        assert check.status in STATUSES and (check.status == "ok" or check.remedy)


# --- device helpers -------------------------------------------------------------------------------


def test_parse_device():
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("CUDA") == ("cuda", None)
    assert parse_device(" Auto ") == ("auto", None)
    assert parse_device("cpu") == ("cpu", None)
    for bad in ("gpu", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(InputError) as err:
            parse_device(bad)
        assert "cuda:N" in err.value.one_line()


def test_arch_supported():
    assert device.arch_supported((8, 0), ["sm_80", "sm_90"])
    assert device.arch_supported((8, 6), ["sm_80"])  # same major, binary compatible
    assert device.arch_supported((12, 0), ["sm_90", "compute_90"])  # PTX JIT
    assert not device.arch_supported((6, 1), ["sm_70", "sm_80", "compute_80"])
    assert not device.arch_supported((10, 0), ["sm_90a"])
    assert not device.arch_supported((8, 6), [])


def test_cuda_wheel_tag():
    assert device.cuda_wheel_tag(None) == "cu126"
    assert device.cuda_wheel_tag("12.4") == "cu126"  # minor-version compatibility
    assert device.cuda_wheel_tag("12.8") == "cu128"
    assert device.cuda_wheel_tag("13.1") == "cu130"
    assert device.cuda_wheel_tag("11.4") == "cu118"


def test_nvidia_smi_csv_parsing():
    text = "0, NVIDIA H100 80GB HBM3, 550.54.15, 81559, 80000, 9.0\n1, NVIDIA L4, 550.54.15, [N/A], 100, 8.9\n"
    gpus = device._parse_gpu_csv(text)
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3" and gpus[0]["total_bytes"] == 81559 * 2**20
    assert gpus[1]["total_bytes"] is None and gpus[1]["compute_cap"] == "8.9"


# --- preflight ------------------------------------------------------------------------------------


@pytest.mark.skipif(bool(torch.version.cuda), reason="needs a CPU-only torch build")
def test_preflight_cuda_on_cpu_build_explains():
    for spec in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(EnvironmentProblem) as err:
            preflight(spec)
        line = err.value.one_line()
        assert "CPU-only" in line and "--device cpu" in line and "a2p doctor" in line
        assert "download.pytorch.org/whl/cu" in line


def test_preflight_cpu_and_auto():
    cpu = preflight("cpu")
    assert cpu.device == "cpu" and cpu.name.startswith("CPU (")
    auto = preflight("auto", JobEstimate("test job", vram_bytes=1))
    assert isinstance(auto, DeviceChoice) and auto.reason
    if not torch.cuda.is_available():
        assert auto.device == "cpu" and "no CUDA device" in auto.reason
    assert device.describe(cpu).startswith("device: cpu")


def test_preflight_rejects_bad_spec():
    with pytest.raises(InputError):
        preflight("gpu")


# --- on a GPU machine -----------------------------------------------------------------------------


@needs_gpu
def test_gpu_check_reports_capability_and_vram():
    checks = doctor.check_gpus()
    assert [c.name for c in checks] == [f"gpu{i}" for i in range(torch.cuda.device_count())]
    gpu0 = checks[0]
    assert gpu0.status == "ok", gpu0
    assert gpu0.data["capability"] and gpu0.data["arch_supported"] is True
    assert gpu0.data["total_bytes"] > 0 and gpu0.data["free_bytes"] > 0


@needs_gpu
def test_cudnn_smoke_conv():
    check = doctor.check_cudnn()
    assert check.status == "ok", check
    assert all(result == "ok" for result in check.data["conv"].values())


@needs_gpu
def test_preflight_cuda_picks_gpu():
    choice = preflight("cuda")
    assert choice.device == "cuda:0" and choice.name == torch.cuda.get_device_name(0)
    assert device.describe(choice) == f"device: cuda:0 ({choice.name})"
    assert preflight("auto").device.startswith("cuda:")


@needs_gpu
def test_preflight_absurd_job_is_refused():
    job = JobEstimate("huge job", vram_bytes=ABSURD_VRAM)
    with pytest.raises(EnvironmentProblem) as err:
        preflight("cuda:0", job)
    line = err.value.one_line()
    assert "10000.0 GB" in line and "--device cpu" in line
    auto = preflight("auto", job)
    assert auto.device == "cpu" and "10000.0 GB" in auto.reason


@needs_gpu
def test_preflight_device_out_of_range():
    with pytest.raises(InputError) as err:
        preflight(f"cuda:{torch.cuda.device_count()}")
    assert "cuda:0" in err.value.one_line()


def test_compile_cache_is_cold_until_a_compiled_render_marks_it(monkeypatch, tmp_path):
    """The compiled kernels live in the a2p cache, one folder per torch and GPU; a compiled render
    records that it finished, which is what makes the doctor say warm."""
    from a2pcli.aniportrait import runtime

    monkeypatch.setenv("A2P_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(runtime.COMPILE_ENV, "")  # unset for the code, restored afterwards
    state = runtime.compile_cache_state()
    assert not state["warm"] and state["dir"].startswith(str(tmp_path / "compile"))
    runtime.mark_compile_warm({"size": [512, 512], "window_frames": 16, "window_batch": 1, "dtype": "fp16"})
    assert os.environ[runtime.COMPILE_ENV] == state["dir"], "inductor's cache is pointed into the a2p cache"
    runtime.mark_compile_warm({"size": [512, 512], "window_frames": 16, "window_batch": 1, "dtype": "fp16"})
    state = runtime.compile_cache_state()
    assert state["warm"] and len(state["renders"]) == 1, "the same settings are recorded once"
    check = doctor.check_compile_cache()
    assert check.name == "compile_cache" and check.status in STATUSES
    if not torch.cuda.is_available():
        assert check.status == "ok" and "not applicable" in check.summary
