"""The library's floors run one way: data below curation and models, models and losses below training; no Kedro."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "src" / "vtp_kedro" / "vtp"
# A package may not import the packages listed for it (data must not reach up into models or train).
FORBIDDEN = {
    "data": ("vtp_kedro.vtp.models", "vtp_kedro.vtp.losses", "vtp_kedro.vtp.train", "vtp_kedro.vtp.curation",
             "vtp_kedro.vtp.synthetic"),
    # the embedded generator and its calibration: pixels and captions, no model, no metric
    "synthetic": ("vtp_kedro.vtp.models", "vtp_kedro.vtp.losses", "vtp_kedro.vtp.train", "vtp_kedro.vtp.metrics",
                  "vtp_kedro.vtp.curation"),
    # curation reads shards through data; it never trains or loads a model
    "curation": ("vtp_kedro.vtp.models", "vtp_kedro.vtp.losses", "vtp_kedro.vtp.train", "vtp_kedro.vtp.metrics"),
    "models": ("vtp_kedro.vtp.train",),
    "losses": ("vtp_kedro.vtp.train",),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
