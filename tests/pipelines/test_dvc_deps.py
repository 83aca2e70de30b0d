"""Every DVC stage lists the code it runs: its deps cover every project file its pipeline imports.

``dvc repro`` reruns a stage only when one of its ``deps`` changed, so a library file that a
stage imports but does not list would let a changed model or loss keep stale outputs. The
imports are followed statically (``ast``) from the stage's pipeline package and from the
project files Kedro itself loads for every run (``settings.py`` and the hooks), through every
``vtp_kedro`` module they reach, including the packages' ``__init__.py`` files that Python runs
on the way and the modules named in strings (``launcher.ENTRY_POINT``, the module its processes
run with ``python -m``, whose ``__main__`` counts too). A package that exports names lazily
(a module ``__getattr__``, with the real imports under ``if TYPE_CHECKING:``) costs only what its
importers take from it: ``from vtp_kedro.datasets import FolderDataset`` reaches ``folder.py``
and not ``checkpoint.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = "vtp_kedro"
# What `kedro run` imports for every pipeline, whichever one runs.
FRAMEWORK_FILES = ("src/vtp_kedro/settings.py",)
MODULE_STRING = re.compile(rf"^{PACKAGE}(?:\.\w+)+$")


def module_file(module: str) -> Path | None:
    base = SRC / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' ``__init__``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def is_lazy_export(node: ast.AST, path: Path) -> bool:
    return path.name == "__init__.py" and isinstance(node, ast.FunctionDef) and node.name == "__getattr__"


def walk_executed(node: ast.AST, path: Path):
    """``ast.walk`` without the parts an import does not run: ``TYPE_CHECKING`` blocks and a
    package's lazy ``__getattr__`` (what it would import is found through ``lazy_exports``)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not (is_type_checking_block(child) or is_lazy_export(child, path)):
            yield from walk_executed(child, path)


def absolute_module(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))


def lazy_exports(module: str) -> dict[str, str]:
    """A lazy package's ``{name: module}``, read from its ``if TYPE_CHECKING:`` imports."""
    file = module_file(module)
    if file is None or file.name != "__init__.py":
        return {}
    exports = {}
    for block in ast.parse(file.read_text()).body:
        if is_type_checking_block(block):
            for node in ast.walk(block):
                if isinstance(node, ast.ImportFrom):
                    exports.update({alias.name: absolute_module(node, file) for alias in node.names})
    return exports


def imported_modules(path: Path) -> set[str]:
    """The ``vtp_kedro`` modules a file imports (absolute, relative, or named in a string it runs)."""
    found: set[str] = set()
    for node in walk_executed(ast.parse(path.read_text(), filename=str(path)), path):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, path)
            found.add(module)
            exports = lazy_exports(module)
            # `from pkg import name` imports the submodule pkg.name, or the module a lazy pkg maps it to.
            found.update(exports.get(alias.name, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            if module_file(node.value) is not None:
                found.add(node.value)
            if module_file(f"{node.value}.__main__") is not None:
                found.add(f"{node.value}.__main__")
    return {m for m in found if m.split(".")[0] == PACKAGE}


def reachable_files(start: list[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            for name in with_parents(module):
                file = module_file(name)
                if file is not None and file not in seen:
                    todo.append(file)
    return seen


def stage_start_files(stage: str) -> list[Path]:
    pipeline = SRC / PACKAGE / "pipelines" / stage
    return sorted(pipeline.rglob("*.py")) + [ROOT / f for f in FRAMEWORK_FILES]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PIPELINE_STAGES = sorted(s for s in STAGES if (SRC / PACKAGE / "pipelines" / s).is_dir())


def stage_deps(stage: str) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage].get("deps", [])]


def expected_code_deps(stage: str) -> list[str]:
    """What a stage's code ``deps`` should be: its pipeline folder and every other file it imports."""
    pipeline = f"src/{PACKAGE}/pipelines/{stage}"
    files = {str(p.relative_to(ROOT)) for p in reachable_files(stage_start_files(stage))}
    return sorted({pipeline if f.startswith(pipeline + "/") else f for f in files})


def test_every_pipeline_of_the_default_run_has_a_stage() -> None:
    # The scaling study is not a stage: `dvc repro` is the default chain; the study runs hours and
    # skips its finished points by their own fingerprints (docs/design.md).
    from vtp_kedro.pipeline_registry import NOT_IN_DEFAULT_RUN

    pipelines = sorted(p.name for p in (SRC / PACKAGE / "pipelines").iterdir()
                       if p.is_dir() and (p / "pipeline.py").is_file() and p.name not in NOT_IN_DEFAULT_RUN)
    assert PIPELINE_STAGES == pipelines


@pytest.mark.parametrize("stage", PIPELINE_STAGES)
def test_stage_deps_cover_every_project_file_it_imports(stage: str) -> None:
    missing = sorted(str(p.relative_to(ROOT)) for p in reachable_files(stage_start_files(stage))
                     if not covered(p, stage_deps(stage)))
    assert missing == [], f"dvc.yaml stage {stage!r} imports files its deps do not list: {missing}"


@pytest.mark.parametrize("stage", PIPELINE_STAGES)
def test_stage_deps_name_only_project_files_it_imports(stage: str) -> None:
    """The other way round: a library file the stage does not import must not rerun it."""
    reached = {str(p.relative_to(ROOT)) for p in reachable_files(stage_start_files(stage))}
    extra = [dep for dep in stage_deps(stage) if dep.startswith("src/")
             and dep not in reached and dep != f"src/{PACKAGE}/pipelines/{stage}"]
    assert extra == [], f"dvc.yaml stage {stage!r} lists files it does not import: {extra}"


def test_the_import_walk_sees_through_packages_and_factory_strings() -> None:
    """The check itself can fail: the tokenizer stage reaches the trainer's task factory and the models."""
    files = {str(p.relative_to(ROOT)) for p in reachable_files(stage_start_files("tokenizer_pretraining"))}
    assert "src/vtp_kedro/vtp/stages/tokenizer_pretraining.py" in files
    assert "src/vtp_kedro/vtp/stages/tokenizer_pretraining.py" in files
    assert "src/vtp_kedro/vtp/__init__.py" in files
    assert not covered(ROOT / "src/vtp_kedro/vtp/stages/tokenizer_pretraining.py", ["src/vtp_kedro/vtp/model"])
    # Through the lazy package vtp_kedro.datasets, a data stage reaches the folder dataset only.
    data = {str(p.relative_to(ROOT)) for p in reachable_files(stage_start_files("data_generation"))}
    assert "src/vtp_kedro/datasets/folder.py" in data and "src/vtp_kedro/datasets/checkpoint.py" not in data


if __name__ == "__main__":
    # `python -m tests.pipelines.test_dvc_deps`: the code deps each stage needs, to paste into dvc.yaml.
    for name in PIPELINE_STAGES:
        print(f"{name}:\n" + "\n".join(f"      - {dep}" for dep in expected_code_deps(name)))
