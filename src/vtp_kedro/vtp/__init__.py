"""The VTP model library: plain PyTorch models, losses, data I/O and training code.

It never imports Kedro, so it can be used from a notebook, a script or ``torchrun``
alone, and tested without a Kedro session. The Kedro pipelines in
``vtp_kedro.pipelines`` are thin nodes over it.
"""
