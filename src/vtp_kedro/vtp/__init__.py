"""The VTP model library: plain PyTorch models, losses, data I/O and training code.

It never imports Kedro, so it can be used from a notebook, a script or ``torchrun``
alone, and tested without a Kedro session. The Kedro pipelines in
``vtp_kedro.pipelines`` are thin nodes over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtp_kedro.vtp.inference import Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import vtp_kedro.vtp.data.shards`` (e.g. in a filtering worker) must not pull in torch.
    if name in __all__:
        from vtp_kedro.vtp import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
