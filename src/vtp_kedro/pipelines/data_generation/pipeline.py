from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.data_generation.nodes import (
    generate_captioned_shards,
    generate_labelled_images,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                generate_captioned_shards,
                inputs="params:data_generation",
                outputs="raw_captioned_shards",
                name="generate_captioned_shards",
            ),
            node(
                generate_labelled_images,
                inputs="params:data_generation",
                outputs="raw_labelled_images",
                name="generate_labelled_images",
            ),
        ]
    )
