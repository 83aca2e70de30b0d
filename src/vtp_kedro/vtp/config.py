"""The one base class for every configuration object in the library.

Configs are plain declarative classes (read them like dataclasses) validated by pydantic:
an unknown key, a wrong type or an impossible value fails at construction with the key's
full dotted name, so a run fails when it starts, not an hour into it. Kedro validates
``params:`` node inputs typed with these classes before any node runs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """Strict, immutable configuration: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
