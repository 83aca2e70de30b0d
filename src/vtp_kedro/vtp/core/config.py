"""The one base class for every configuration object in the library.

Configs are plain declarative classes (read them like dataclasses) validated by pydantic:
an unknown key, a wrong type or an impossible value fails at construction with the key's
full dotted name, so a run fails when it starts, not an hour into it. Kedro validates
``params:`` node inputs typed with these classes before any node runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Config(BaseModel):
    """Strict, immutable configuration: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


ConfigT = TypeVar("ConfigT", bound=Config)


def merge_mappings(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested mappings key by key, any other value replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_overrides(config: ConfigT, overrides: Mapping[str, Any], name: str = "") -> ConfigT:
    """A copy of ``config`` with ``overrides`` merged in and validated again (so a wrong key or value
    fails here, naming ``name`` and the key)."""
    try:
        return type(config).model_validate(merge_mappings(config.model_dump(), overrides))
    except ValidationError as exc:
        raise ValueError(f"overrides of {name or type(config).__name__} are invalid: {exc}") from None


def from_preset(config_type: type[ConfigT], presets: Mapping[str, Mapping[str, Any]], preset: str,
                **overrides: Any) -> ConfigT:
    """``config_type`` of the named size preset, with any field overridden; an unknown name fails
    naming the choices."""
    if preset not in presets:
        raise ValueError(f"unknown {config_type.__name__} preset {preset!r}; choose one of {sorted(presets)}")
    return config_type(**{**presets[preset], **overrides})
