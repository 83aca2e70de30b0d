"""vtp-kedro: visual tokenizer pre-training (VTP, arXiv 2512.13687) as a reproducible Kedro workflow."""

__version__ = "0.1.0"
