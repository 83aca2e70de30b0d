"""Metrics that judge a tokenizer: reconstruction (here), understanding and generation (later stages)."""
