from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.decoder_gan.nodes import compare_reconstructions, finetune_decoder, plot_gan_curves


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                finetune_decoder,
                inputs=["pretrained_tokenizer", "filtered_shards", "params:decoder_gan"],
                outputs=["decoder_gan_checkpoint", "decoder_gan_training_log", "gan_tokenizer"],
                name="finetune_decoder",
            ),
            node(
                plot_gan_curves,
                inputs="decoder_gan_training_log",
                outputs="decoder_gan_training_curves",
                name="plot_gan_curves",
            ),
            node(
                compare_reconstructions,
                inputs=["pretrained_tokenizer", "gan_tokenizer", "raw_labelled_images", "params:decoder_gan"],
                outputs=["decoder_gan_comparison", "decoder_gan_comparison_protocol", "decoder_gan_metrics",
                         "decoder_gan_reconstructions"],
                name="compare_reconstructions",
            ),
        ]
    )
