"""Project pipelines."""
from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

NOT_IN_DEFAULT_RUN = ("scaling_study",)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = find_pipelines(raise_errors=True)
    # The default run is the chain; the scaling study (hours: a grid of whole chains) runs only when named.
    pipelines["__default__"] = sum(p for name, p in pipelines.items() if name not in NOT_IN_DEFAULT_RUN)
    return pipelines
