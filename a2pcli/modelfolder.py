"""A model folder as a2p's own networks ship it: `config.json` (format, version, the network's constructor
arguments, whatever else the model needs, meta) beside `model.safetensors` (the weights, with the format and
version as string metadata). Each model module names its format, version and kind and adds its own checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from a2pcli.errors import ModelError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def write_model_folder(folder: Path, fmt: str, version: int, tensors: dict, doc: dict) -> None:
    """Write `tensors` (name -> float/int tensor, contiguous, on the CPU) as WEIGHTS_FILE and {format, version,
    **doc} as CONFIG_FILE into `folder`, each atomically."""
    from safetensors.torch import save_file

    from a2pcli.outputs import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": fmt, "version": str(version)})
    doc = {"format": fmt, "version": version, **doc}
    with atomic_path(folder / CONFIG_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=json_default) + "\n")


def json_default(o):
    """json.dumps' fallback for numpy scalars and arrays and paths."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def model_file_error(path: Path, kind: str, why: str, remedy: str) -> ModelError:
    """The error for a missing or unreadable file of a `kind` ("audio2motion", "mouth", ...) model folder."""
    return ModelError(f"{kind} model file is missing or corrupt ({why})", subject=str(path), remedy=remedy)


def read_model_config(folder: Path, fmt: str, version: int, parse: Callable[[dict], object], kind: str,
                      remedy: str, version_noun: str = "model") -> tuple[object, dict]:
    """folder/CONFIG_FILE -> (parse(its "model" section), the whole document), checked for the format and
    version. ModelError naming the file (with `remedy`) when it is missing, unreadable, of another format or
    version, or its model section does not parse."""
    path = Path(folder) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise model_file_error(path, kind, "not found", remedy) from None
    except (OSError, ValueError) as exc:
        raise model_file_error(path, kind, str(exc)[:120], remedy) from exc
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise model_file_error(path, kind, f"not an {fmt} config", remedy)
    if doc.get("version") != version:
        raise ModelError(f"{version_noun} format version {doc.get('version')} is not supported (this a2p reads "
                         f"{version})", subject=str(path), remedy="use the a2p version that trained it")
    try:
        cfg = parse(doc["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise model_file_error(path, kind, f"bad model section: {exc}", remedy) from exc
    return cfg, doc


def read_model_tensors(path: Path, kind: str, remedy: str) -> dict:
    """A WEIGHTS_FILE -> name -> tensor (CPU). ModelError naming the file when it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise model_file_error(path, kind, "not found", remedy)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise model_file_error(path, kind, str(exc)[:120], remedy) from exc


def check_settings(doc: dict, folder: Path, key: str, settings: dict, what: str) -> None:
    """A model trained with other `settings` (e.g. speech features) than this a2p computes is refused."""
    if doc.get(key) != json.loads(json.dumps(settings)):
        raise ModelError(f"the model was trained with other {what} settings than this a2p computes",
                         subject=str(Path(folder) / CONFIG_FILE),
                         remedy="retrain it with this a2p version, or use the a2p that trained it")


def load_weights_strictly(net, state: dict, path: Path, kind: str, remedy: str):
    """`state` into `net` with every key and shape matching and every weight finite, else the model file is
    named corrupt. Returns `net` in eval mode."""
    try:
        net.load_state_dict(state, strict=True)
        if not all(bool(v.isfinite().all()) for v in state.values()):
            raise ValueError("non-finite weights")
    except (RuntimeError, ValueError) as exc:
        raise model_file_error(path, kind, f"does not match {CONFIG_FILE}: {str(exc)[:160]}", remedy) from exc
    return net.eval()


def resolve_model_folder(name_or_path: str | Path | None, shipped: str) -> Path:
    """None (the model `shipped`), a registry name (its files checked against the registry's sha256) or a path ->
    the model folder; a path to a folder's weights or config file gives the folder. A registry model whose files
    are missing or corrupt: the ModelError's remedy adds `a2p models verify NAME`."""
    from a2pcli import registry

    name = shipped if name_or_path is None else str(name_or_path)
    try:
        folder, _ = registry.resolve(name)
    except ModelError as exc:
        if name in _registry_names():
            raise ModelError(exc.message, subject=exc.subject,
                             remedy=f"{exc.remedy}; `a2p models verify {name}` re-checks every model file") from exc
        raise
    if folder.is_file() and folder.name in (WEIGHTS_FILE, CONFIG_FILE):
        folder = folder.parent
    return folder


def _registry_names() -> set[str]:
    from a2pcli import registry

    try:
        return set(registry.load_registry())
    except ModelError:
        return set()
