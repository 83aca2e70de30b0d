"""Project-specific Kedro datasets (the catalog's ``type:`` entries that kedro-datasets lacks)."""

from vtp_kedro.datasets.checkpoint import CheckpointDataset
from vtp_kedro.datasets.folder import FolderDataset

__all__ = ["CheckpointDataset", "FolderDataset"]
