"""One module per trained stage, each with its config, its model, its ``TrainTask`` and its ``STAGE``:
``tokenizer_pretraining`` (the joint VTP objective), ``decoder_gan`` (the frozen encoder's
decoder against a discriminator), ``dit`` (flow matching on the latents); ``flops`` counts a
tokenizer step's FLOPs for compute budgets; ``registry`` finds a stage by its name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package's own import stays light: a stage module imports what it builds
    from vtp_kedro.vtp.core.config import Config
    from vtp_kedro.vtp.engine.trainer import TrainTask


@dataclass(frozen=True)
class Stage:
    """A trained stage: its name (what a run config's ``stage`` says), the schema of its task
    config, and ``build``, which turns one validated config into this rank's ``TrainTask`` and
    data stream (an iterable of batches with ``state_dict``/``load_state_dict``)."""

    name: str
    config: type[Config]
    build: Callable[[Any], tuple[TrainTask, Iterable[Any]]]
