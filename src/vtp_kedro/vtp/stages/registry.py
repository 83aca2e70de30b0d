"""The trained stages by name: what a run config's ``stage`` names and the launcher builds.

The paper's three are registered here. A stage of your own (and a test's toy stage) joins with
``register_stage`` in a module that the run config lists under ``imports``, which every process
imports before it looks the stage up (as mmcv's ``custom_imports`` do), so that torchrun's ranks
and a cluster's nodes find it too.
"""

from __future__ import annotations

from vtp_kedro.vtp.stages import Stage, decoder_gan, dit, tokenizer_pretraining

STAGES: dict[str, Stage] = {stage.name: stage for stage in (tokenizer_pretraining.STAGE, decoder_gan.STAGE, dit.STAGE)}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to ``STAGES``; registering the same stage again is harmless, another under a taken name fails."""
    registered = STAGES.setdefault(stage.name, stage)
    if registered is not stage:
        raise ValueError(f"a different stage is already registered as {stage.name!r} "
                         f"(by {registered.build.__module__})")
    return stage


def get_stage(name: str) -> Stage:
    """The stage registered as ``name``; an unknown name fails naming the registered ones."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; registered: {sorted(STAGES)} (a stage of your own joins with "
                         "vtp_kedro.vtp.stages.registry.register_stage in a module listed under the run config's "
                         "'imports')")
    return STAGES[name]
