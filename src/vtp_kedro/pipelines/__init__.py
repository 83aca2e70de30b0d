"""The project's Kedro pipelines, one folder each, found by ``find_pipelines()``."""
