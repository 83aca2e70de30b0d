from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.latent_extraction.nodes import encode_labelled_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                encode_labelled_images,
                inputs=["gan_tokenizer", "raw_labelled_images", "params:latent_extraction"],
                outputs="latents",
                name="encode_labelled_images",
            ),
        ]
    )
