"""Every environment's parameters validate against the nodes' typed configs, before any run.

``conf/paper`` cannot run here (no ImageNet, no GPU), so this is where its typos are caught.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from vtp_kedro.pipelines.data_filtering.nodes import DataFilteringParams
from vtp_kedro.pipelines.data_generation.nodes import DataGenerationParams
from vtp_kedro.pipelines.decoder_gan.nodes import DecoderGANParams
from vtp_kedro.pipelines.dit_training.nodes import DiTTrainingParams
from vtp_kedro.pipelines.evaluation.nodes import EvaluationParams
from vtp_kedro.pipelines.latent_extraction.nodes import LatentExtractionParams
from vtp_kedro.pipelines.scaling_study.nodes import ScalingStudyParams
from vtp_kedro.pipelines.tokenizer_pretraining.nodes import TokenizerPretrainingParams
from vtp_kedro.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[2] / "conf"
PARAMS = {"data_generation": DataGenerationParams, "data_filtering": DataFilteringParams,
          "tokenizer_pretraining": TokenizerPretrainingParams, "decoder_gan": DecoderGANParams,
          "latent_extraction": LatentExtractionParams, "dit_training": DiTTrainingParams,
          "evaluation": EvaluationParams, "scaling_study": ScalingStudyParams}


def parameters_of(env: str) -> dict:
    """The parameters a ``kedro run --env <env>`` sees (the project's loader settings)."""
    return OmegaConfigLoader(str(CONF), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["parameters"]


@pytest.mark.parametrize("env", ["base", "ci", "paper", "gpu"])
def test_parameters_validate(env: str) -> None:
    parameters = parameters_of(env)
    assert set(PARAMS) <= set(parameters)
    for key, model in PARAMS.items():
        model.model_validate(parameters[key])


def test_paper_dit_is_xl_1_on_imagenet_recipe() -> None:
    parameters = parameters_of("paper")
    dit = DiTTrainingParams.model_validate(parameters["dit_training"])
    model = dit.model.for_latents(in_channels=64, input_size=16, num_classes=1000)
    assert (model.depth, model.width, model.heads, model.patch_size) == (28, 1152, 16, 1)
    assert dit.trainer.budget.value == 100_000 and dit.data.batch_size * dit.launcher.nproc_per_node == 1024
    assert dit.sampling.num_samples == 50_000 and dit.sampling.num_steps == 250


def test_paper_evaluation_is_inception_on_adm_reference_batch() -> None:
    evaluation = EvaluationParams.model_validate(parameters_of("paper")["evaluation"])
    assert evaluation.feature_spaces[0] == "inception" and evaluation.generation.reference.endswith(".npz")
    assert evaluation.reconstruction.lpips_backbone == "vgg" and evaluation.understanding.features == "bottleneck"


def test_paper_keeps_the_papers_choices_where_conf_base_scales_them_down() -> None:
    """conf/base sets CPU-scale values that a soft merge would carry into conf/paper unless it names its own."""
    parameters = parameters_of("paper")
    tokenizer = TokenizerPretrainingParams.model_validate(parameters["tokenizer_pretraining"])
    crops = tokenizer.model.multicrop
    assert (crops.global_scale, crops.local_scale, crops.blur_sigma) == ((0.32, 1.0), (0.05, 0.32), (0.1, 2.0))
    assert tokenizer.model.semantic_features == "bottleneck"
    gan = DecoderGANParams.model_validate(parameters["decoder_gan"])
    assert gan.comparison.lpips_backbone == "vgg" and gan.model.reconstruction.perceptual_backbone == "vgg"
    assert gan.trainer.optimizers["generator"].lr == 2e-4


def test_a_scheduler_address_needs_the_dask_executor() -> None:
    params = parameters_of("base")["data_filtering"]
    with pytest.raises(ValueError, match="scheduler_address is set but executor is not 'dask'"):
        DataFilteringParams.model_validate({**params, "scheduler_address": "tcp://head:8786"})
    assert DataFilteringParams.model_validate({**params, "executor": "dask", "scheduler_address": "tcp://h:1"})
