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

A folder can still be damaged after it was written (a full disk, a copy cut short, a flipped
byte): ``trainer_state.json``, written last, records the sha256 of every other file
(``files``), and ``checkpoint_problem`` says what is wrong with a folder (a missing, truncated or
changed file, by name) without loading it. A resume takes the newest *intact* checkpoint
(``latest_intact_checkpoint``), naming each damaged one it skips; ``load_checkpoint`` fails with
``DamagedCheckpointError`` naming the file instead of a reader's bare error.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vtp_kedro.vtp.core.io import atomic_path, file_sha256
from vtp_kedro.vtp.core.tensors import load_tensors, save_tensors

CHECKPOINT_NAME = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.safetensors"
INFERENCE_WEIGHTS_FILE = "tokenizer.safetensors"  # a tokenizer inference folder's weights (vtp.inference)
TASK_STATE_FILE = "task_state.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"
_FILES = (MODEL_FILE, TASK_STATE_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, RNG_FILE)
_DIGESTED = (MODEL_FILE, TASK_STATE_FILE, OPTIMIZER_FILE, RNG_FILE)  # their sha256 in trainer_state.json
DIGESTS_KEY = "files"

log = logging.getLogger(__name__)


class DamagedCheckpointError(ValueError):
    """A checkpoint folder whose files cannot be trusted: names the folder and what is wrong."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"checkpoint {path} is damaged: {problem}")
        self.path, self.problem = Path(path), problem


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
    trainer_state = {key: value for key, value in trainer_state.items() if key != DIGESTS_KEY}
    try:
        json.dumps(trainer_state)
    except TypeError as error:
        raise TypeError(f"trainer state of step {step} is not JSON-serialisable (the data "
                        f"source's state_dict() must hold plain values): {error}") from None
    save_tensors(model, folder / MODEL_FILE)
    save_tensors(task_state, folder / TASK_STATE_FILE)
    torch.save(optimizer, folder / OPTIMIZER_FILE)
    torch.save(rng, folder / RNG_FILE)
    digests = {name: file_sha256(folder / name) for name in _DIGESTED}
    text = json.dumps({**trainer_state, "step": step, DIGESTS_KEY: digests}, indent=2, sort_keys=True)
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
    """The complete checkpoint with the highest step in ``directory``, or None (not verified:
    see ``latest_intact_checkpoint``)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header and size), reading only its header."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes, no header)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"{path.name} is truncated: its header says {length} bytes, the file has {size - 8} after the length"
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            return f"{path.name} has an unreadable header ({error})"
    if size != 8 + length + end:
        return f"{path.name} has {size} bytes where its header describes {8 + length + end} (truncated or extended)"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with the checkpoint folder ``path`` (a missing, truncated or changed file, by
    name), or None when it is intact. Reads each file once (sha256), loads nothing.

    Folders written before ``trainer_state.json`` recorded digests get the structural checks only
    (safetensors framing, the ``.pt`` files' zip directories)."""
    path = Path(path)
    if not path.is_dir():
        return "the folder does not exist"
    missing = [name for name in _FILES if not (path / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text())
        step = state["step"]
    except (ValueError, KeyError, TypeError) as error:
        return f"{TRAINER_STATE_FILE} is unreadable ({type(error).__name__}: {error})"
    if CHECKPOINT_NAME.match(path.name) and checkpoint_step(path) != step:
        return f"{TRAINER_STATE_FILE} says step {step}, the folder's name step {checkpoint_step(path)}"
    for name in (MODEL_FILE, TASK_STATE_FILE):
        problem = _safetensors_problem(path / name)
        if problem:
            return problem
    recorded = state.get(DIGESTS_KEY)
    if isinstance(recorded, dict):
        for name in _DIGESTED:
            if name in recorded and file_sha256(path / name) != recorded[name]:
                return (f"{name} differs from the file that was saved (its sha256 is not the one recorded in "
                        f"{TRAINER_STATE_FILE}): changed or corrupted on disk")
        return None
    for name in (OPTIMIZER_FILE, RNG_FILE):
        try:
            with zipfile.ZipFile(path / name) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as error:
            return f"{name} is not a readable torch file ({error})"
        if bad is not None:
            return f"{name} is corrupted (record {bad} fails its CRC)"
    return None


def verify_checkpoint(path: str | Path) -> None:
    """Raise ``DamagedCheckpointError`` (naming the file and what is wrong) unless ``path`` is intact."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise DamagedCheckpointError(path, problem)


def latest_intact_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` that ``checkpoint_problem`` finds intact, or None; each
    newer damaged one is skipped with a warning that names it and what is wrong."""
    for path in reversed(list_checkpoints(directory)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s; resuming from the previous intact one", path, problem)
    return None


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
    verify_checkpoint(path)
    readers = {"model": (MODEL_FILE, lambda f: load_tensors(f, map_location)),
               "task_state": (TASK_STATE_FILE, lambda f: load_tensors(f, map_location)),
               "optimizer": (OPTIMIZER_FILE, lambda f: torch.load(f, map_location=map_location, weights_only=True)),
               "trainer_state": (TRAINER_STATE_FILE, lambda f: json.loads(f.read_text())),
               "rng": (RNG_FILE, lambda f: torch.load(f, weights_only=True))}
    loaded: dict[str, Any] = {"path": path}
    for key, (name, read) in readers.items():
        try:
            loaded[key] = read(path / name)
        except Exception as error:  # a reader's bare error (SafetensorError, a zip error) names no file
            raise DamagedCheckpointError(path, f"{name} cannot be read ({type(error).__name__}: {error})") from error
    loaded["step"] = loaded["trainer_state"]["step"]
    return loaded
