from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.scaling_study.nodes import (
    fit_study_reference_classifier,
    judge_scaling_study,
    plan_scaling_study,
    plot_generation_scaling,
    plot_generation_vs_understanding,
    plot_reconstruction_scaling,
    plot_understanding_scaling,
    run_scaling_study,
    summarise_scaling_study,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                plan_scaling_study,
                inputs=["filtered_shards", "params:scaling_study", "params:tokenizer_pretraining", "params:decoder_gan",
                        "params:latent_extraction", "params:dit_training", "params:evaluation"],
                outputs="scaling_plan",
                name="plan_scaling_study",
            ),
            node(
                fit_study_reference_classifier,
                inputs=["raw_labelled_images", "scaling_plan"],
                outputs="scaling_study_reference_classifier",
                name="fit_study_reference_classifier",
            ),
            node(
                run_scaling_study,
                inputs=["scaling_plan", "catalog_config", "filtered_shards", "raw_labelled_images",
                        "scaling_study_reference_classifier"],
                outputs="scaling_results",
                name="run_scaling_study",
            ),
            node(plot_reconstruction_scaling, inputs=["scaling_results", "params:scaling_study"],
                 outputs="scaling_reconstruction_plot", name="plot_reconstruction_scaling"),
            node(plot_generation_scaling, inputs=["scaling_results", "params:scaling_study"],
                 outputs="scaling_generation_plot", name="plot_generation_scaling"),
            node(plot_understanding_scaling, inputs=["scaling_results", "params:scaling_study"],
                 outputs="scaling_understanding_plot", name="plot_understanding_scaling"),
            node(plot_generation_vs_understanding, inputs=["scaling_results", "params:scaling_study"],
                 outputs="scaling_generation_vs_understanding_plot", name="plot_generation_vs_understanding"),
            node(judge_scaling_study, inputs=["scaling_results", "params:scaling_study"], outputs="scaling_verdict",
                 name="judge_scaling_study"),
            node(summarise_scaling_study, inputs=["scaling_results", "params:scaling_study"],
                 outputs="scaling_summary", name="summarise_scaling_study"),
        ]
    )
