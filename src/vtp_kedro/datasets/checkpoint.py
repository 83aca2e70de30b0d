"""A full training checkpoint (weights, teacher, optimizer, trainer state, config) as one catalog entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from vtp_kedro.vtp.core.io import atomic_path, project_relative
from vtp_kedro.vtp.engine.checkpoint import load_checkpoint, write_checkpoint_files
from vtp_kedro.vtp.engine.trainer import METRICS_LOG

CONFIG_FILE = "config.json"


class CheckpointDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """A trainer checkpoint folder plus the resolved config that produced it.

    The dict is ``vtp.engine.checkpoint.load_checkpoint``'s (``model``, ``task_state``,
    ``optimizer``, ``trainer_state``, ``rng``, ``step``) with ``config`` (the resolved run
    config), ``metrics`` (the training log records) and, on load, ``path`` (the folder, for
    jobs in other processes that read the weights themselves). Weights are safetensors; the folder is
    written atomically. kedro-datasets' PyTorchDataset keeps only a state_dict, which is not
    enough to rebuild the model or resume it.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _load(self) -> dict[str, Any]:
        checkpoint = load_checkpoint(self._path)
        config = self._path / CONFIG_FILE
        if not config.is_file():
            raise DatasetError(f"checkpoint {self._path} has no {CONFIG_FILE}: it was not saved by CheckpointDataset")
        checkpoint["config"] = json.loads(config.read_text())
        checkpoint["path"] = str(project_relative(self._path))
        metrics = self._path / METRICS_LOG
        checkpoint["metrics"] = ([json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                                 if metrics.is_file() else [])
        return checkpoint

    def _save(self, data: dict[str, Any]) -> None:
        missing = {"model", "task_state", "optimizer", "trainer_state", "rng", "config"} - data.keys()
        if missing:
            raise DatasetError(f"checkpoint for {self._path} lacks {sorted(missing)}")
        with atomic_path(self._path) as tmp:
            tmp.mkdir(parents=True)
            write_checkpoint_files(tmp, data["trainer_state"]["step"], model=data["model"],
                                   task_state=data["task_state"], optimizer=data["optimizer"],
                                   trainer_state=data["trainer_state"], rng=data["rng"])
            (tmp / CONFIG_FILE).write_text(json.dumps(data["config"], indent=2) + "\n")
            (tmp / METRICS_LOG).write_text("".join(json.dumps(r) + "\n" for r in data.get("metrics", [])))

    def _exists(self) -> bool:
        return (self._path / CONFIG_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
