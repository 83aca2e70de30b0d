from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.dit_training.nodes import (
    plot_dit_curves,
    plot_dit_samples,
    sample_dit,
    sample_dit_unguided,
    train_dit,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                train_dit,
                inputs=["latents", "params:dit_training"],
                outputs=["dit_checkpoint", "dit_training_log"],
                name="train_dit",
            ),
            node(plot_dit_curves, inputs="dit_training_log", outputs="dit_training_curves", name="plot_dit_curves"),
            node(
                sample_dit,
                inputs=["dit_checkpoint", "gan_tokenizer", "latents", "params:dit_training"],
                outputs="dit_samples",
                name="sample_dit",
            ),
            node(
                sample_dit_unguided,
                inputs=["dit_checkpoint", "gan_tokenizer", "latents", "params:dit_training"],
                outputs="dit_samples_unguided",
                name="sample_dit_unguided",
            ),
            node(plot_dit_samples, inputs=["dit_samples", "params:dit_training"], outputs="dit_sample_grid",
                 name="plot_dit_samples"),
        ]
    )
