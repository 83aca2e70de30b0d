"""Tensor files: name -> tensor mappings as safetensors, tied tensors stored once, byte-stable.

Identical tensors give identical files (DVC hashes bytes; a run fingerprint reads them), which
safetensors alone does not guarantee (its header's metadata map is written in hash order).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _view_key(name: str, tensor: torch.Tensor) -> tuple:
    if tensor.numel() == 0:
        return ("empty", name)  # empty tensors all sit at address 0 without sharing anything
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype, tensor.device)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a name -> tensor mapping to safetensors, storing tied tensors once; byte-stable.

    safetensors refuses tensors that share memory; an exact alias (a tied weight) is written
    once and recorded in the metadata, any other overlapping view is copied. ``metadata``
    adds string entries to the file's header (not ``format`` or ``aliases``).
    """
    extra = dict(metadata or {})
    if {"format", "aliases"} & extra.keys():
        raise ValueError(f"{path}: metadata keys 'format' and 'aliases' are reserved")
    first_name: dict[tuple, str] = {}
    storages: set[int] = set()
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{path}: value of {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        key = _view_key(name, tensor)
        if key in first_name:
            aliases[name] = first_name[key]
            continue
        first_name[key] = name
        pointer = tensor.untyped_storage().data_ptr()
        shares_storage = pointer in storages and tensor.numel() > 0
        storages.add(pointer)
        unique[name] = tensor.clone().contiguous() if shares_storage else tensor.contiguous()
    path = Path(path)
    unsorted = path.with_name(f".{path.name}.unsorted")
    try:
        save_file({name: t.cpu() for name, t in unique.items()}, str(unsorted),
                  metadata={**extra, "format": "pt", "aliases": json.dumps(aliases, sort_keys=True)})
        _write_with_sorted_metadata(unsorted, path)
    finally:
        unsorted.unlink(missing_ok=True)


def _write_with_sorted_metadata(source: Path, target: Path) -> None:
    """Copy a safetensors file with its header's keys sorted, so equal tensors give equal bytes.

    safetensors writes the metadata map in hash order, which differs between processes
    (huggingface/safetensors#584), so the same weights would give one of two files and DVC
    would see a change where there is none. The header is re-serialised deterministically
    (tensor offsets are relative to the data, so they stay valid) and padded with spaces to
    8 bytes as safetensors does; the tensor bytes are streamed over unchanged.
    """
    with open(source, "rb") as src:
        length = int.from_bytes(src.read(8), "little")
        header = json.loads(src.read(length))
        text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        text += b" " * (-len(text) % 8)
        with open(target, "wb") as dst:
            dst.write(len(text).to_bytes(8, "little"))
            dst.write(text)
            shutil.copyfileobj(src, dst, length=1 << 24)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read what ``save_tensors`` wrote; aliases point to the same tensor again."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    tensors = load_file(str(path), device=str(device))
    for alias, target in aliases.items():
        tensors[alias] = tensors[target]
    return tensors
