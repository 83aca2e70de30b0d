from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.tokenizer_pretraining.nodes import plot_training_curves, pretrain_tokenizer


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                pretrain_tokenizer,
                inputs=["filtered_shards", "raw_labelled_images", "params:tokenizer_pretraining"],
                outputs=["tokenizer_checkpoint", "tokenizer_training_log", "tokenizer_probe_log", "pretrained_tokenizer"],
                name="pretrain_tokenizer",
            ),
            node(
                plot_training_curves,
                inputs=["tokenizer_training_log", "tokenizer_probe_log"],
                outputs="tokenizer_training_curves",
                name="plot_training_curves",
            ),
        ]
    )
