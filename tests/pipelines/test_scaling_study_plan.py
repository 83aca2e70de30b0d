"""The scaling study's plan (every point's parameters, validated up front) and its per-point catalogs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader

from tests.pipelines.test_conf_envs import PARAMS, parameters_of
from vtp_kedro.pipelines.scaling_study.nodes import ScalingStudyParams, plan_scaling_study
from vtp_kedro.pipelines.scaling_study.points import point_catalog, point_pipeline
from vtp_kedro.settings import CONFIG_LOADER_ARGS
from vtp_kedro.vtp.data.shards import write_shard

CONF = Path(__file__).resolve().parents[2] / "conf"
STAGES = ("tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training", "evaluation")


def _stage_params(env: str = "base", **study_overrides) -> tuple[ScalingStudyParams, dict]:
    parameters = parameters_of(env)
    study = ScalingStudyParams.model_validate({**parameters["scaling_study"], **study_overrides})
    return study, {stage: PARAMS[stage].model_validate(parameters[stage]) for stage in STAGES}


@pytest.fixture
def shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the working directory, as under `kedro run`) with three shards of 4, 4 and 2 samples."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data/03_primary/filtered_shards"
    for index, count in enumerate((4, 4, 2)):
        write_shard(folder / f"{index:05d}.tar", [{"__key__": f"{index}_{i}", "jpg": b"x", "txt": "a b"}
                                                   for i in range(count)])
    return folder


def test_the_base_plan_moves_each_point_into_its_folder_with_its_coordinates(shards: Path) -> None:
    study, stages = _stage_params()
    plan = plan_scaling_study(shards, study, *stages.values())
    assert len(plan.points) == 30  # 5 presets x 3 budgets x 2 seeds
    assert [p.seed for p in plan.points] == [0] * 15 + [1] * 15  # the whole grid's first seed first
    first = plan.points[0]
    tokenizer = first.params["tokenizer_pretraining"]
    assert tokenizer.model.objective == first.point.objective == "ae"
    assert tokenizer.trainer.budget.unit == "flops" and tokenizer.trainer.budget.value == first.point.budget_flops
    assert tokenizer.trainer.evaluate_every == study.tokenizer_pretraining["trainer"]["evaluate_every"]
    point_dir = f"data/07_model_output/scaling_study/{first.point.name}/seed0"
    assert tokenizer.runs_dir == f"{point_dir}/06_models/tokenizer_pretraining_runs"
    assert first.params["dit_training"].runs_dir == f"{point_dir}/06_models/dit_runs"
    assert first.params["dit_training"].trainer.budget.value == study.downstream.dit_training["trainer"]["budget"]["value"]
    assert first.params["dit_training"].sampling == stages["dit_training"].sampling  # the rest is the chain's
    assert first.params["evaluation"] == stages["evaluation"]
    assert tokenizer.data.shards is None and first.data_samples is None  # all the data
    # only the coordinates differ between points of one budget
    same_budget = [p for p in plan.points if p.point.budget_flops == first.point.budget_flops and p.seed == 0]
    assert {p.params["tokenizer_pretraining"].model.objective for p in same_budget} == {"ae", "ae_noise", "clip_ae",
                                                                                      "ssl_ae", "vtp"}
    control = next(p for p in same_budget if p.point.objective == "ae_noise").params["tokenizer_pretraining"].model
    assert control.noise_tau > 0 and tokenizer.model.noise_tau == 0


def test_a_data_size_takes_the_fewest_whole_shards_and_fingerprints_differ(shards: Path) -> None:
    study, stages = _stage_params(grid={"objective": ["vtp"], "budget_flops": [1e13], "data_size": [5, None]},
                                  seeds=[0])
    small, everything = plan_scaling_study(shards, study, *stages.values()).points
    assert small.params["tokenizer_pretraining"].data.shards == ["data/03_primary/filtered_shards/00000.tar",
                                                                 "data/03_primary/filtered_shards/00001.tar"]
    assert small.data_samples == 8 and small.point.name == "vtp_1e13flops_default_5_bottleneck"
    assert everything.params["tokenizer_pretraining"].data.shards is None
    digests = {"shards": "a"}
    assert small.fingerprint(digests) != everything.fingerprint(digests)
    assert small.fingerprint(digests) != small.fingerprint({"shards": "b"})
    assert small.fingerprint(digests) == small.fingerprint(dict(digests))


def test_the_plan_fails_before_training_on_what_cannot_run(shards: Path) -> None:
    study, stages = _stage_params(grid={"objective": ["vtp"], "budget_flops": [1e13], "data_size": [100]})
    with pytest.raises(ValueError, match="100 samples: the 3 shards hold only 10"):
        plan_scaling_study(shards, study, *stages.values())
    with pytest.raises(ValueError, match="model_size names \\['huge'\\]"):
        _stage_params(grid={"objective": ["vtp"], "budget_flops": [1e13], "model_size": ["huge"]})
    study, stages = _stage_params(downstream={"dit_training": {"trainer": {"budgett": 1}}})
    with pytest.raises(ValueError, match="(?s)scaling_study: dit_training.*trainer.budgett"):
        plan_scaling_study(shards, study, *stages.values())
    study, stages = _stage_params()
    stages["decoder_gan"] = stages["decoder_gan"].model_copy(update={"tokenizer": "some/tokenizer"})
    with pytest.raises(ValueError, match="decoder_gan.tokenizer is 'some/tokenizer'"):
        plan_scaling_study(shards, study, *stages.values())


def test_a_model_size_overrides_the_tokenizer(shards: Path) -> None:
    study, stages = _stage_params(grid={"objective": ["ae"], "budget_flops": [1e13], "model_size": ["small"]},
                                  seeds=[0])
    (point,) = plan_scaling_study(shards, study, *stages.values()).points
    assert point.params["tokenizer_pretraining"].model.tokenizer.encoder.width == 96
    assert point.params["tokenizer_pretraining"].model.tokenizer.latent_dim == 16  # the rest is the default's


def _absolute(entry: dict, project: Path) -> dict:
    return {key: _absolute(value, project) if isinstance(value, dict)
            else str(project / value) if key in ("path", "filepath") else value for key, value in entry.items()}


def test_a_point_catalog_moves_the_chain_outputs_and_reads_the_shared_inputs(tmp_path: Path) -> None:
    catalog_config = OmegaConfigLoader(str(CONF), **CONFIG_LOADER_ARGS)["catalog"]
    catalog_config = _absolute(catalog_config, tmp_path)  # as the session resolves them
    data, point_dir = tmp_path / "data", tmp_path / "data/07_model_output/scaling_study/p"
    catalog = point_catalog(catalog_config, point_pipeline(), point_dir, {}, data)

    def path(name: str) -> str:
        described = catalog.get(name)._describe()
        return str(described.get("path") or described.get("filepath") or described["dataset"]["filepath"])

    assert path("tokenizer_checkpoint") == str(point_dir / "06_models/tokenizer")
    assert path("evaluation_metrics") == str(point_dir / "08_reporting/evaluation/metrics.json")
    assert path("filtered_shards") == str(data / "03_primary/filtered_shards")
    assert path("reference_classifier") == str(data / "07_model_output/scaling_study/reference_classifier")
    assert "fit_reference_classifier" not in {node.name for node in point_pipeline().nodes}
    outside = {**catalog_config, "latents": {"type": "vtp_kedro.datasets.FolderDataset", "path": "/elsewhere/latents"}}
    with pytest.raises(ValueError, match="/elsewhere/latents is not under"):
        point_catalog(outside, point_pipeline(), point_dir, {}, data)


def test_the_verdict_nodes_read_the_results_table_as_kedro_hands_it_over(tmp_path: Path) -> None:
    """results.csv read back by pandas (NaN for empty cells) gives the library's verdict and summary."""
    import pandas as pd

    from tests.vtp.test_scaling_verdict import _table
    from vtp_kedro.pipelines.scaling_study.nodes import judge_scaling_study, summarise_scaling_study
    from vtp_kedro.pipelines.scaling_study.pipeline import create_pipeline
    from vtp_kedro.vtp import scaling

    rows = _table(gfid=lambda o, d: 60 + 5 * d if o != "vtp" else 50 - 10 * d,
                  probe=lambda o, d: 0.12 if o != "vtp" else 0.2 + 0.1 * d, rfid=lambda o, d: 30 - 8 * d)
    pd.DataFrame(rows).reindex(columns=list(scaling.RESULT_COLUMNS)).to_csv(tmp_path / "results.csv", index=False)
    results = pd.read_csv(tmp_path / "results.csv")
    study, _ = _stage_params()
    judged = judge_scaling_study(results, study)
    assert {claim["verdict"] for claim in judged["claims"]} == {"supported"}
    assert judged == scaling.verdict(rows, study.verdict)
    assert "## Verdict on the paper's claims" in summarise_scaling_study(results, study)
    assert "scaling_verdict" in create_pipeline().all_outputs()


def _differences(first: Any, second: Any, path: str = "") -> list[str]:
    if isinstance(first, dict):
        return [found for key in first for found in _differences(first[key], second[key], f"{path}.{key}")]
    return [] if first == second else [path]


def test_each_point_runs_once_per_seed_with_its_training_seeds_derived(shards: Path) -> None:
    study, stages = _stage_params(grid={"objective": ["vtp"], "budget_flops": [1e13]}, seeds=[0, 3])
    first, second = plan_scaling_study(shards, study, *stages.values()).points
    assert (first.seed, second.seed, first.point) == (0, 3, second.point)
    assert first.path.endswith("/seed0") and second.run_name.endswith("_seed3")
    for stage, config in stages.items():  # seed 0 keeps the chain's own seeds
        assert not [d for d in _differences(config.model_dump(), first.params[stage].model_dump())
                    if d.endswith(".seed")], stage
    for stage in ("tokenizer_pretraining", "decoder_gan", "dit_training"):
        before, after = first.params[stage].model_dump(), second.params[stage].model_dump()
        changed = _differences(before, after)
        seeds = [d for d in changed if d.endswith(".seed")]
        assert seeds and set(changed) == set(seeds) | {".runs_dir"}, (stage, changed)
        for path in seeds:  # configured + 10000 x the run seed
            value = lambda dump: functools.reduce(lambda node, key: node[key], path.strip(".").split("."), dump)
            assert value(after) == value(before) + 30000, path
    dit = second.params["dit_training"]
    assert {dit.trainer.seed, dit.data.seed, dit.sampling.seed} >= {30000}  # training, data order and sampling noise
    assert second.params["tokenizer_pretraining"].model.seed == 30000
    assert second.params["evaluation"] == first.params["evaluation"]  # the measuring protocol stays
    assert second.params["dit_training"].runs_dir.endswith("/seed3/06_models/dit_runs")
    assert first.fingerprint({"shards": "a"}) != second.fingerprint({"shards": "a"})
    for bad in ([1, 1], [-1], []):
        with pytest.raises(ValueError, match="seeds"):
            _stage_params(seeds=bad)


def test_a_finished_point_and_seed_is_not_rerun(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume machinery of run_scaling_study (the stages themselves left out): every (point, seed)
    runs once, a rerun runs nothing, and a run whose point.json is gone runs again alone."""
    from vtp_kedro.pipelines.scaling_study import nodes, points

    study, stages = _stage_params(grid={"objective": ["ae", "vtp"], "budget_flops": [1e13]}, seeds=[0, 1])
    plan = plan_scaling_study(shards, study, *stages.values())
    ran: list[str] = []
    class NoRunner:  # run_point runs no stage: it writes point.json and nothing else
        def run(self, pipeline, catalog):
            return None

    monkeypatch.setattr(points, "SequentialRunner", NoRunner)
    real_run_point = nodes.run_point
    monkeypatch.setattr(nodes, "run_point", lambda planned, *args: ran.append(planned.path) or real_run_point(
        planned, *args))
    monkeypatch.setattr(nodes, "point_row", lambda planned, catalog, run_id: {"point": planned.point.name,
                                                                              "seed": planned.seed})
    catalog_config = _absolute(OmegaConfigLoader(str(CONF), **CONFIG_LOADER_ARGS)["catalog"], tmp_path)
    labelled, classifier = tmp_path / "labelled", tmp_path / "classifier"
    for folder in (labelled, classifier):
        folder.mkdir()
        (folder / "x.txt").write_text(folder.name)
    results = nodes.run_scaling_study(plan, catalog_config, shards, labelled, classifier)
    assert len(ran) == 4 and len(results) == 4 and sorted(results["seed"]) == [0, 0, 1, 1]
    ran.clear()
    nodes.run_scaling_study(plan, catalog_config, shards, labelled, classifier)
    assert ran == []
    (tmp_path / study.points_dir / plan.points[3].path / "point.json").unlink()
    nodes.run_scaling_study(plan, catalog_config, shards, labelled, classifier)
    assert ran == [plan.points[3].path] and plan.points[3].seed == 1
