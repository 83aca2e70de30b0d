from kedro.pipeline import Pipeline, node, pipeline

from vtp_kedro.pipelines.data_filtering.nodes import filter_captioned_shards, report_filtering


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                filter_captioned_shards,
                inputs=["raw_captioned_shards", "params:data_filtering"],
                outputs="filtered_shards",
                name="filter_captioned_shards",
            ),
            node(
                report_filtering,
                inputs=["filtered_shards", "raw_captioned_shards", "params:data_filtering"],
                outputs=[
                    "filter_counts",
                    "filter_metrics",
                    "filter_manifest",
                    "filter_resolution_histogram",
                    "filter_caption_length_histogram",
                ],
                name="report_filtering",
            ),
        ]
    )
