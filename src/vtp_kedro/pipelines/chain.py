"""Settings that several stages share, checked together before the first node runs.

One setting points the chain at a user's labelled folder: ``latent_extraction.image_root``.
The evaluation follows it (``evaluation.image_root: null``), so its reference classifier, probes
and generated-sample scores use the classes the DiT was trained on. A run whose stages would
disagree (an ``evaluation.image_root`` with other classes than the latents' folder, samples of
other classes, a DiT trained on one tokenizer's latents and decoded by another) is refused by
``ChainSettingsHook`` before any node trains, naming the settings, instead of failing at the
evaluation's last node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

SAMPLES_RECORD = "sampling.json"  # vtp.launch.sample_dit.SETTINGS_FILE (not imported: this file loads with every run)


class ChainSettingsError(ValueError):
    """Two stages' settings disagree; the message names them and says which to change."""


def folder_classes(root: str | Path, split: str = "train") -> list[str] | None:
    """The class names of ``root/<split>`` as ``LabelledImageFolder`` reads them (its sub-folders, sorted),
    or None when the folder is not there (yet)."""
    folder = Path(root) / split
    if not folder.is_dir():
        return None
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _setting(section: Any, key: str) -> Any:
    """``section[key]`` of a stage's parameters: a dict, or the typed config Kedro validated it into."""
    if section is None:
        return None
    return section.get(key) if isinstance(section, Mapping) else getattr(section, key, None)


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _path_of(catalog: Any, name: str) -> Path | None:
    if catalog is None or name not in catalog:
        return None
    path = catalog.get(name)._describe().get("path")
    return None if path is None or "://" in str(path) else Path(path)


def chain_problems(parameters: Mapping[str, Any], pipelines: set[str], embedded_folder: str | Path | None = None,
                   dit_samples: str | Path | None = None, gan_tokenizer: str | Path | None = None) -> list[str]:
    """What disagrees between the stages in ``pipelines`` (the names of the pipelines this run runs) under
    ``parameters`` (the run's, overrides applied); an empty list when nothing does.

    ``embedded_folder`` (the ``raw_labelled_images`` entry), ``dit_samples`` and ``gan_tokenizer`` are the
    catalog's paths, for the defaults that follow them."""
    extraction, evaluation = parameters.get("latent_extraction"), parameters.get("evaluation")
    latent_root = _setting(extraction, "image_root") or embedded_folder
    latent_setting = ("latent_extraction.image_root" if _setting(extraction, "image_root")
                      else "the embedded labelled folder (latent_extraction.image_root: null)")
    problems = []
    evaluation_root = _setting(evaluation, "image_root")
    if "evaluation" in pipelines and evaluation_root and latent_root and not _same_folder(evaluation_root, latent_root):
        theirs, ours = folder_classes(evaluation_root), folder_classes(latent_root)
        if theirs is None or ours is None or theirs != ours:
            detail = (f"its classes {theirs} are not the latents' {ours}" if theirs is not None and ours is not None
                      else "the classes cannot be compared: one of them has no train/ split yet")
            problems.append(
                f"evaluation.image_root ({evaluation_root}) is not the folder the latents come from, {latent_setting} "
                f"({latent_root}): {detail}. The evaluation scores samples of the latents' classes: set "
                f"evaluation.image_root: null to follow latent_extraction.image_root")
    if "evaluation" in pipelines and "dit_training" not in pipelines and dit_samples is not None:
        record_path = Path(dit_samples) / SAMPLES_RECORD
        root = evaluation_root or latent_root
        classes = folder_classes(root) if root else None
        if record_path.is_file() and classes is not None:
            sampled = json.loads(record_path.read_text()).get("classes")
            if sampled is not None and sampled != classes:
                problems.append(
                    f"the DiT samples in {dit_samples} are of the classes {sampled}, the evaluation's labelled folder "
                    f"({root}) has {classes}: run latent_extraction and dit_training with the same "
                    "latent_extraction.image_root first (or evaluate on the folder they were made from)")
    tokenizer = _setting(extraction, "tokenizer")
    if "dit_training" in pipelines and tokenizer and gan_tokenizer is not None and not _same_folder(tokenizer,
                                                                                                   gan_tokenizer):
        problems.append(
            f"latent_extraction.tokenizer is {tokenizer}, but dit_training decodes its samples with the decoder_gan "
            f"output ({gan_tokenizer}): the DiT would learn one tokenizer's latents and be decoded by another. "
            "Set latent_extraction.tokenizer: null, or run dit_training on latents of the gan_tokenizer")
    return problems


def validate_chain(parameters: Mapping[str, Any], pipelines: set[str], catalog: Any = None) -> None:
    """Raise ``ChainSettingsError`` listing every disagreement (``chain_problems``) before anything runs."""
    embedded = _path_of(catalog, "raw_labelled_images")
    problems = chain_problems(parameters, pipelines, embedded, _path_of(catalog, "dit_samples"),
                              _path_of(catalog, "gan_tokenizer"))
    if problems:
        raise ChainSettingsError("the chain's settings disagree (nothing has run):\n- " + "\n- ".join(problems))


def pipelines_in(pipeline: Any) -> set[str]:
    """The project pipelines whose nodes a run's pipeline holds (``vtp_kedro.pipelines.<name>.nodes``)."""
    prefix = f"{__package__}."
    return {node.func.__module__.removeprefix(prefix).split(".")[0] for node in pipeline.nodes
            if getattr(node.func, "__module__", "").startswith(prefix)}


class ChainSettingsHook:
    """Runs ``validate_chain`` on the run's parameters before the first node."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        validate_chain(parameters, pipelines_in(pipeline), catalog)
