"""The library's rooms import one way (core at the bottom, launch at the top; no circles) and never Kedro.

Type-only imports (``if TYPE_CHECKING:``) do not count: they run no code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "src" / "vtp_kedro" / "vtp"


def _rooms(*names: str) -> tuple[str, ...]:
    return tuple(f"vtp_kedro.vtp.{name}" for name in names)


# A room may not import the rooms listed for it. From the bottom: core (its own test below), data
# (readers, writers, views), then curation and synthetic beside models, losses and sampling, then
# metrics; the engine knows no model; stages put models, losses, metrics and the engine together;
# inference and launch are on top.
ABOVE_MODELS = _rooms("metrics", "engine", "stages", "launch", "inference", "scaling")
FORBIDDEN = {
    "data": _rooms("curation", "synthetic", "models", "losses", "sampling") + ABOVE_MODELS,
    "curation": _rooms("synthetic", "models", "losses") + ABOVE_MODELS,
    "synthetic": _rooms("curation", "models", "losses") + ABOVE_MODELS,
    "models": _rooms("losses") + ABOVE_MODELS,
    "losses": ABOVE_MODELS,
    "metrics": _rooms("engine", "stages", "launch", "inference", "scaling"),
    "engine": _rooms("data", "models", "losses", "metrics", "stages", "launch", "inference", "scaling"),
    "stages": _rooms("launch", "inference", "scaling"),
}


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    type_only = {id(node) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
                 for node in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_floors_never_import_upper_ones(package):
    offenders = [
        f"{path.relative_to(LIBRARY)} imports {name}"
        for path in sorted((LIBRARY / package).rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name.startswith(FORBIDDEN[package])
    ]
    assert not offenders, offenders


def test_library_never_imports_kedro():
    offenders = [f"{path.relative_to(LIBRARY)}: {name}" for path in sorted(LIBRARY.rglob("*.py"))
                 for name in imported_modules(path) if name == "kedro" or name.startswith("kedro.")]
    assert not offenders, offenders


def test_core_imports_nothing_else_of_the_project():
    offenders = [f"{path.relative_to(LIBRARY)} imports {name}" for path in sorted((LIBRARY / "core").rglob("*.py"))
                 for name in sorted(imported_modules(path))
                 if name.startswith("vtp_kedro") and not name.startswith("vtp_kedro.vtp.core")]
    assert not offenders, offenders
