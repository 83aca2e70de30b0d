"""Project-specific Kedro datasets (the catalog's ``type:`` entries that kedro-datasets lacks)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtp_kedro.datasets.checkpoint import CheckpointDataset
    from vtp_kedro.datasets.folder import FolderDataset

__all__ = ["CheckpointDataset", "FolderDataset"]
_MODULES = {"CheckpointDataset": "checkpoint", "FolderDataset": "folder"}


def __getattr__(name: str) -> Any:
    # Lazy: a data stage that saves folders must not import the trainer (CheckpointDataset's
    # module), or every change to the trainer would look like a change to that stage (dvc.yaml deps).
    if name in _MODULES:
        return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
