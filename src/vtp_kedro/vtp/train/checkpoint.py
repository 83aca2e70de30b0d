"""Training checkpoints: one folder per save, written atomically, the last K kept.

``<run>/checkpoints/step_00000100/`` holds

- ``model.safetensors``: the task model's parameters and buffers (full, unsharded), tied
  tensors stored once and restored as aliases;
- ``task_state.safetensors``: the task's own state beyond the model (EMA teacher, centres,
  sampler generator states), a flat name -> tensor mapping;
- ``optimizer.pt``: each optimizer's state (``{name: state}``, e.g. ``main`` or
  ``generator`` and ``discriminator``) keyed by parameter name (loaded with
  ``weights_only=True``: no code runs when reading it);
- ``trainer_state.json``: step, samples and FLOPs so far, non-finite counters, total steps
  and budget, and each rank's data position;
- ``rng.pt``: each rank's Python, NumPy, torch CPU and CUDA generator states.

The folder is written under a temporary name and renamed when complete, so a process killed
mid-save leaves no folder that looks like a checkpoint; ``latest_checkpoint`` only sees
complete ones.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vtp_kedro.vtp.io import atomic_path
from vtp_kedro.vtp.tensors import load_tensors, save_tensors

CHECKPOINT_NAME = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.safetensors"
INFERENCE_WEIGHTS_FILE = "tokenizer.safetensors"  # a tokenizer inference folder's weights (vtp.inference)
TASK_STATE_FILE = "task_state.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"
_FILES = (MODEL_FILE, TASK_STATE_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, RNG_FILE)


def checkpoint_name(step: int) -> str:
    if not 0 <= step < 10**8:
        raise ValueError(f"step must be in [0, 1e8); got {step}")
    return f"step_{step:08d}"


def checkpoint_step(path: str | Path) -> int:
    match = CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (expected a name like step_00000100)")
    return int(match.group(1))


def named_optimizer_states(saved: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The saved optimizer states by optimizer name; a checkpoint from before named optimizers
    (one flat state dict) counts as the state of a single-optimizer task's only optimizer."""
    if "state" in saved and "param_groups" in saved and len(names) == 1:
        return {names[0]: saved}
    if set(saved) != set(names):
        raise ValueError(f"the checkpoint holds optimizer states {sorted(saved)}, the task steps {list(names)}")
    return saved


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in ``path``: a checkpoint folder's ``model.safetensors``, a tokenizer
    inference folder's ``tokenizer.safetensors``, or a ``.safetensors`` file itself."""
    path = Path(path)
    for candidate in (path / MODEL_FILE, path / INFERENCE_WEIGHTS_FILE, path):
        if candidate.is_file() and candidate.suffix == ".safetensors":
            return load_tensors(candidate)
    raise FileNotFoundError(f"{path} holds no weights: expected a checkpoint folder ({MODEL_FILE}), a tokenizer "
                            f"inference folder ({INFERENCE_WEIGHTS_FILE}) or a .safetensors file")


def load_state_strictly(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` after checking keys and shapes, with every offending
    name in the error (``source`` says where the weights came from)."""
    expected = module.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    mismatched = sorted(f"{k}: {tuple(state[k].shape)} in the source, {tuple(expected[k].shape)} in the model"
                        for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f"{source} does not fit: missing {missing}, unexpected {unexpected}, "
                         f"shape mismatches {mismatched}")
    module.load_state_dict(state, strict=True)


# --- random number generators --------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and (when present) CUDA generator states."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # weights_only-loadable
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- folders ---------------------------------------------------------------------------------
def write_checkpoint_files(folder: str | Path, step: int, *, model: dict[str, torch.Tensor],
                           task_state: dict[str, torch.Tensor], optimizer: dict[str, Any],
                           trainer_state: dict[str, Any], rng: list[dict[str, Any]]) -> None:
    """Write the checkpoint files into the existing ``folder`` (not atomic by itself)."""
    folder = Path(folder)
    try:
        text = json.dumps({**trainer_state, "step": step}, indent=2, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"trainer state of step {step} is not JSON-serialisable (the data "
                        f"source's state_dict() must hold plain values): {error}") from None
    save_tensors(model, folder / MODEL_FILE)
    save_tensors(task_state, folder / TASK_STATE_FILE)
    torch.save(optimizer, folder / OPTIMIZER_FILE)
    torch.save(rng, folder / RNG_FILE)
    (folder / TRAINER_STATE_FILE).write_text(text + "\n")


def save_checkpoint(directory: str | Path, step: int, **parts: Any) -> Path:
    """Write ``directory/step_<step>`` atomically and return its path (``parts`` as for
    ``write_checkpoint_files``)."""
    path = Path(directory) / checkpoint_name(step)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write_checkpoint_files(tmp, step, **parts)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoint folders in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.is_dir() and CHECKPOINT_NAME.match(p.name) and (p / TRAINER_STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints; returns the deleted folders."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1; got {keep_last}")
    doomed = list_checkpoints(directory)[:-keep_last]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def remove_partial_checkpoints(directory: str | Path) -> list[Path]:
    """Delete temporary folders that a killed save left behind (``.step_*.tmp``, ``.step_*.old``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    partial = [p for p in directory.iterdir() if p.name.startswith(".step_") and p.is_dir()]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Every part of a checkpoint folder.

    Returns ``{"path", "step", "model", "task_state", "optimizer", "trainer_state", "rng"}``;
    ``model`` is a state dict for ``task.model.load_state_dict``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    for name in _FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
    trainer_state = json.loads((path / TRAINER_STATE_FILE).read_text())
    return {
        "path": path,
        "step": trainer_state["step"],
        "model": load_tensors(path / MODEL_FILE, map_location),
        "task_state": load_tensors(path / TASK_STATE_FILE, map_location),
        "optimizer": torch.load(path / OPTIMIZER_FILE, map_location=map_location, weights_only=True),
        "trainer_state": trainer_state,
        "rng": torch.load(path / RNG_FILE, weights_only=True),
    }
