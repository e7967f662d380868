"""The sidecar metadata beside an output (`--meta`, and every job of `a2p batch`), built here only.

    <output>.json = {"command": ..., "inputs": [{"name", "path", "size", "sha256"}, ...],
                     "options": {...the job, as its options objects nest...},
                     "versions": {"a2p", "torch", "numpy", "python"}, "summary": {...the result...}}

`command`, `inputs` and `options` say what the output was made from (`job_record`); `a2p batch` skips a job
whose output exists beside a sidecar that records the same (`matches`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from enum import Enum
from pathlib import Path

import numpy as np

from a2pcli import __version__
from a2pcli.outputs import atomic_path

SUFFIX = ".json"
# how a job writes, not what it makes: left out of the record (a resumed batch may differ in them)
NOT_RECORDED = ("overwrite", "meta")


def sidecar_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + SUFFIX)


def _value(v):
    if dataclasses.is_dataclass(v):
        return {f.name: _value(getattr(v, f.name)) for f in dataclasses.fields(v) if f.name not in NOT_RECORDED}
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v


def options_record(job) -> dict:
    """The job's options as JSON values (nested as the options objects nest)."""
    return _value(job)


def input_record(name: str, source) -> dict:
    """What identifies an input: its path, size and sha256 (an array given in place of a file: its shape and the
    sha256 of its bytes)."""
    if isinstance(source, np.ndarray):
        return {"name": name, "path": None, "shape": list(source.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()}
    from a2pcli.cache import sha256_file

    path = Path(source)
    return {"name": name, "path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


def job_record(command: str, inputs: dict, job) -> dict:
    """What an output is made from: the command, its inputs (those of the options too, e.g. a --pose template)
    and every option."""
    return {"command": command, "inputs": [input_record(name, src) for name, src in inputs.items()],
            "options": options_record(job)}


def versions() -> dict:
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"a2p": __version__, "torch": version("torch"), "numpy": np.__version__,
            "python": platform.python_version()}


def write_sidecar(output: Path, record: dict, summary: dict) -> Path:
    """Write `<output>.json` atomically (the caller has checked that it may be written)."""
    path = sidecar_path(output)
    data = {**record, "versions": versions(), "summary": summary}
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def records_job(output: Path, record: dict) -> bool:
    """True when the sidecar beside `output` records the same command, inputs and options as `record`."""
    path = sidecar_path(output)
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(data.get(k) == record[k] for k in ("command", "inputs", "options"))


def matches(output: Path, record: dict) -> bool:
    """True when `output` exists beside a sidecar that records the same command, inputs and options."""
    return Path(output).is_file() and records_job(output, record)
