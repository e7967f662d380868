"""Where the files shipped with a2p live (the `models/` folder, packaged into the wheel)."""

from __future__ import annotations

from pathlib import Path

PACKAGED_MODELS = "_models"  # name of models/ inside the installed wheel (see pyproject.toml)


def shipped_models_dir() -> Path:
    """The shipped `models/` folder: inside the installed package, or the source checkout's."""
    from importlib.resources import files

    packaged = Path(str(files("a2pcli"))) / PACKAGED_MODELS
    if packaged.is_dir():
        return packaged
    return Path(str(files("a2pcli"))).parent / "models"
