"""Nodes of the scaling_study pipeline: plan the grid, run every point's downstream chain, tabulate, plot.

Every point is one tokenizer pre-training configuration judged by the default chain's own
pipelines (``points.py``), each in ``<points_dir>/<point>/`` with its own runs, outputs and
nested MLflow run. The study is a Kedro pipeline rather than DVC experiments because a point
is the whole downstream chain under the Kedro environment's parameters (``--env paper`` grids
on a cluster, ``--env ci`` in the tests), and a finished point must be skipped by content, not
by DVC's per-stage locks of one workspace.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field, field_validator, model_validator

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.pipelines.decoder_gan.nodes import DecoderGANParams
from vtp_kedro.pipelines.dit_training.nodes import DiTTrainingParams
from vtp_kedro.pipelines.evaluation.nodes import EvaluationParams, reference_classifier_writer
from vtp_kedro.pipelines.latent_extraction.nodes import LatentExtractionParams
from vtp_kedro.pipelines.scaling_study.points import (
    PlannedPoint,
    point_catalog,
    point_pipeline,
    point_row,
    read_point_record,
    relocate,
    run_point,
)
from vtp_kedro.pipelines.tokenizer_pretraining.nodes import TokenizerPretrainingParams
from vtp_kedro.vtp import scaling
from vtp_kedro.vtp.core.config import Config, with_overrides
from vtp_kedro.vtp.core.io import DigestCache, atomic_path, fingerprint, folder_digest, project_relative
from vtp_kedro.vtp.data.shards import expand_urls, shard_prefix
from vtp_kedro.vtp.launch.runs import shards_digest

log = logging.getLogger(__name__)


class DownstreamOverrides(Config):
    """Per-stage overrides for every point (nested keys of that stage's parameters): the study's
    downstream protocol, e.g. a shorter DiT run than the default chain's."""

    decoder_gan: dict[str, Any] = {}
    latent_extraction: dict[str, Any] = {}
    dit_training: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}


# The stages whose seeds a run seed moves (scaling.derived_seed_overrides). The evaluation keeps its
# own: it is the measuring protocol, shared with the study's one reference classifier.
SEEDED_STAGES = ("tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training")


class ScalingStudyParams(Config):
    # Each run's own data tree (<points_dir>/<point>/seed<seed>/06_models/..., 08_reporting/...), runs and point.json.
    points_dir: str
    grid: scaling.ScalingGridConfig
    # Every point runs once per seed; seed s moves every seed of the pre-training, GAN, extraction and
    # DiT stages (trainers, data, samplers, DiT sampling) to configured + 10000 s (seed 0: as configured).
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    # Tokenizer sizes the grid's model_size names: overrides of tokenizer_pretraining.model.tokenizer.
    model_sizes: dict[str, dict[str, Any]] = {scaling.DEFAULT_MODEL_SIZE: {}}
    # Overrides of tokenizer_pretraining's parameters for every point (the grid's coordinates come after).
    tokenizer_pretraining: dict[str, Any] = {}
    downstream: DownstreamOverrides = DownstreamOverrides()
    # How summary.md and verdict.json judge the paper's claims (intervals' level, gFID margin, bootstrap).
    verdict: scaling.VerdictConfig = scaling.VerdictConfig()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"scaling_study.seeds must be distinct seeds >= 0; got {list(seeds)}")
        return seeds

    @model_validator(mode="after")
    def _model_sizes(self) -> ScalingStudyParams:
        unknown = sorted(set(self.grid.model_size) - set(self.model_sizes) - {scaling.DEFAULT_MODEL_SIZE})
        if unknown:
            raise ValueError(f"scaling_study.grid.model_size names {unknown}, which scaling_study.model_sizes "
                             f"does not define (it has {sorted(self.model_sizes)})")
        return self


@dataclass(frozen=True)
class ScalingPlan:
    points_dir: str
    points: list[PlannedPoint]  # one per point and seed, in the order they run
    evaluation: EvaluationParams  # the study's evaluation (shared by every point), for its reference classifier
    image_size: int  # the tokenizers' training size, the reference classifier's default


def _point_runs_dir(runs_dir: str, points_dir: str, run: str) -> str:
    """A stage's runs folder for the run ``<point>/seed<seed>``: moved into the run's data tree when it
    is under data/, else a sub-folder ``scaling_study/<point>/seed<seed>`` of it."""
    data_dir = Path.cwd() / "data"
    if (Path.cwd() / runs_dir).resolve().is_relative_to(data_dir):
        return relocate(str((Path.cwd() / runs_dir).resolve()), data_dir, Path(points_dir) / run)
    return str(Path(runs_dir) / "scaling_study" / run)


def _point_params(point: scaling.GridPoint, seed: int, study: ScalingStudyParams, shards: list[str] | None,
                  stages: dict[str, Config]) -> dict[str, Config]:
    """Every stage's parameters for ``point`` run with ``seed``: the project's, the study's overrides,
    the point's coordinates, then the seeds derived from ``seed``; runs folders move into the run's folder."""
    run = PlannedPoint.run_path(point, seed)
    coordinates = {"model": {"objective": point.objective, "semantic_features": point.semantic_features,
                             "tokenizer": study.model_sizes.get(point.model_size, {})},
                   "trainer": {"budget": {"unit": "flops", "value": point.budget_flops}}}
    if shards is not None:
        coordinates["data"] = {"shards": shards}
    overrides = {"tokenizer_pretraining": [study.tokenizer_pretraining, coordinates],
                 **{stage: [getattr(study.downstream, stage)] for stage in DownstreamOverrides.model_fields}}
    params = {}
    for stage, config in stages.items():
        for layer in overrides[stage]:
            config = with_overrides(config, layer, f"scaling_study: {stage}")
        if stage in SEEDED_STAGES:
            config = with_overrides(config, scaling.derived_seed_overrides(config.model_dump(mode="json"), seed))
        if "runs_dir" in type(config).model_fields:
            config = with_overrides(config, {"runs_dir": _point_runs_dir(config.runs_dir, study.points_dir, run)})
        params[stage] = config
    return params


def plan_scaling_study(filtered_shards: Path, study: ScalingStudyParams, tokenizer_pretraining: TokenizerPretrainingParams,
                       decoder_gan: DecoderGANParams, latent_extraction: LatentExtractionParams,
                       dit_training: DiTTrainingParams, evaluation: EvaluationParams) -> ScalingPlan:
    """Every point's parameters, validated before anything trains: a wrong override or a data size
    larger than the data fails here, naming the key or the size."""
    for name, value in (("decoder_gan.tokenizer", decoder_gan.tokenizer),
                        ("latent_extraction.tokenizer", latent_extraction.tokenizer)):
        if value is not None:
            raise ValueError(f"{name} is {value!r}: the scaling study feeds each point its own tokenizer; set it to null")
    # project-relative, so that fingerprints are the same in every clone
    urls = [str(project_relative(url)) for url in expand_urls(tokenizer_pretraining.data.shards or str(filtered_shards))]
    prefixes = {size: shard_prefix(urls, size) for size in study.grid.data_size if size is not None}
    stages = {"tokenizer_pretraining": tokenizer_pretraining, "decoder_gan": decoder_gan,
              "latent_extraction": latent_extraction, "dit_training": dit_training, "evaluation": evaluation}
    points = []  # seed by seed, so that an interrupted study has every point's first seeds
    for seed in study.seeds:
        for point in scaling.expand_grid(study.grid):
            shards, samples = prefixes.get(point.data_size, (None, None))
            points.append(PlannedPoint(point, _point_params(point, seed, study, shards, stages), samples, seed))
    study_evaluation = points[0].params["evaluation"]
    if study_evaluation.image_root is None and latent_extraction.image_root is not None:
        # the evaluation follows the folder the latents come from (as the evaluation pipeline does)
        study_evaluation = study_evaluation.model_copy(update={"image_root": latent_extraction.image_root})
    log.info("scaling study: %d runs (%d seeds) in %s", len(points), len(study.seeds), study.points_dir)
    return ScalingPlan(points_dir=study.points_dir, points=points, evaluation=study_evaluation,
                       image_size=points[0].params["tokenizer_pretraining"].data.image_size)


def fit_study_reference_classifier(raw_labelled_images: Path, plan: ScalingPlan) -> StagedFolder:
    """The one reference classifier every point's evaluation measures in (it depends on the labelled
    images and its settings only, so training it per point would repeat the same network). Kept in
    ``<points_dir>/.reference_classifiers/<fingerprint>``: a rerun of the study trains nothing."""
    points_dir = Path(plan.points_dir)
    cache = DigestCache(points_dir / ".content_digests.json")
    identity = {"settings": plan.evaluation.model_dump(mode="json"), "image_size": plan.image_size,
                "labelled_images": folder_digest(plan.evaluation.image_root or raw_labelled_images, cache)}
    cache.save()
    trained = points_dir / ".reference_classifiers" / fingerprint(identity, 16)
    train = reference_classifier_writer(raw_labelled_images, plan.evaluation, plan.image_size)

    def write(folder: Path) -> None:
        if not trained.is_dir():
            with atomic_path(trained) as tmp:
                tmp.mkdir()
                train(tmp)
        shutil.copytree(trained, folder, dirs_exist_ok=True)

    return write_now(write, "scaling_study_reference_classifier")


def run_scaling_study(plan: ScalingPlan, catalog_config: dict[str, Any], filtered_shards: Path,
                      raw_labelled_images: Path, scaling_study_reference_classifier: Path) -> pd.DataFrame:
    """Run every (point, seed) not finished yet (a finished one is read from its ``point.json``);
    returns the results table, one row per run."""
    data_dir, points_dir = Path.cwd() / "data", Path.cwd() / plan.points_dir
    cache = DigestCache(points_dir / ".content_digests.json")
    labelled = folder_digest(raw_labelled_images, cache)
    classifier = folder_digest(scaling_study_reference_classifier, cache)
    rows = []
    for index, planned in enumerate(plan.points, start=1):
        shards = planned.params["tokenizer_pretraining"].data.shards or str(filtered_shards)
        digests = {"shards": shards_digest(expand_urls(shards), cache), "labelled_images": labelled,
                   "reference_classifier": classifier}
        cache.save()
        point_key = planned.fingerprint(digests)
        point_dir = points_dir / planned.path
        catalog = point_catalog(catalog_config, point_pipeline(), point_dir, planned.params, data_dir)
        record = read_point_record(point_dir, point_key)
        if record is not None:
            log.info("scaling study run %d/%d %s: finished, not rerun", index, len(plan.points), planned.path)
            run_id = record["mlflow_run_id"]
        else:
            log.info("scaling study run %d/%d %s: running", index, len(plan.points), planned.path)
            run_id = run_point(planned, catalog, point_dir, point_key)
        rows.append(point_row(planned, catalog, run_id))
    return pd.DataFrame(rows, columns=list(scaling.RESULT_COLUMNS))


def _rows(results: pd.DataFrame) -> list[dict[str, Any]]:
    return results.to_dict(orient="records")


def plot_reconstruction_scaling(scaling_results: pd.DataFrame, study: ScalingStudyParams) -> Figure:
    return scaling.plot_reconstruction(_rows(scaling_results), study.verdict.level)


def plot_generation_scaling(scaling_results: pd.DataFrame, study: ScalingStudyParams) -> Figure:
    return scaling.plot_generation(_rows(scaling_results), study.verdict.level)


def plot_understanding_scaling(scaling_results: pd.DataFrame, study: ScalingStudyParams) -> Figure:
    return scaling.plot_understanding(_rows(scaling_results), study.verdict.level)


def plot_generation_vs_understanding(scaling_results: pd.DataFrame, study: ScalingStudyParams) -> Figure:
    return scaling.plot_generation_vs_understanding(_rows(scaling_results), study.verdict)


def judge_scaling_study(scaling_results: pd.DataFrame, study: ScalingStudyParams) -> dict[str, Any]:
    """verdict.json: each of the paper's claims supported, contradicted or undecided, with its statistics."""
    return scaling.verdict(_rows(scaling_results), study.verdict)


def summarise_scaling_study(scaling_results: pd.DataFrame, study: ScalingStudyParams) -> str:
    return scaling.summary_markdown(_rows(scaling_results), study.verdict)
