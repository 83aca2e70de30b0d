"""Project settings (see https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

from kedro.config import OmegaConfigLoader

from vtp_kedro.hooks import CatalogConfigHook, HeadlineHook, MissingInputsHook, ProjectMlflowHook, StageTimingHook
from vtp_kedro.pipelines.chain import ChainSettingsHook

# kedro-mlflow's own hook is replaced by the project's subclass of it (its distribution
# names itself kedro_mlflow in recent wheels, kedro-mlflow in older ones).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")
# ChainSettingsHook: settings that several stages share must agree before the first node runs.
HOOKS = (ProjectMlflowHook(), MissingInputsHook(), HeadlineHook(), CatalogConfigHook(), StageTimingHook(),
         ChainSettingsHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments (ci, paper, local) override only the parameter keys they name.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**"],
    },
}
