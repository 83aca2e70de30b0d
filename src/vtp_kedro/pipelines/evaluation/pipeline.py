from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.evaluation.nodes import (
    evaluate_generation,
    evaluate_reconstruction,
    evaluate_understanding,
    fit_reference_classifier,
    report_evaluation,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                fit_reference_classifier,
                inputs=["gan_tokenizer", "raw_labelled_images", "params:evaluation", "params:latent_extraction"],
                outputs="reference_classifier",
                name="fit_reference_classifier",
            ),
            node(
                evaluate_reconstruction,
                inputs=["pretrained_tokenizer", "gan_tokenizer", "raw_labelled_images", "reference_classifier",
                        "params:evaluation", "params:latent_extraction"],
                outputs=["evaluation_reconstruction", "evaluation_reconstruction_grid"],
                name="evaluate_reconstruction",
            ),
            node(
                evaluate_understanding,
                inputs=["tokenizer_checkpoint", "pretrained_tokenizer", "raw_labelled_images", "reference_classifier",
                        "params:evaluation", "params:latent_extraction"],
                outputs=["evaluation_understanding", "evaluation_confusion_matrix"],
                name="evaluate_understanding",
            ),
            node(
                evaluate_generation,
                inputs=["dit_samples", "dit_samples_unguided", "raw_labelled_images", "reference_classifier",
                        "params:evaluation", "params:latent_extraction"],
                outputs=["evaluation_generation", "evaluation_sample_grid"],
                name="evaluate_generation",
            ),
            node(
                report_evaluation,
                inputs=["evaluation_reconstruction", "evaluation_understanding", "evaluation_generation",
                        "reference_classifier", "tokenizer_training_log", "decoder_gan_training_log",
                        "dit_training_log"],
                outputs=["evaluation_metrics", "evaluation_protocol", "evaluation_mlflow_metrics", "evaluation_summary",
                         "evaluation_headline", "evaluation_training_curves"],
                name="report_evaluation",
            ),
        ]
    )
