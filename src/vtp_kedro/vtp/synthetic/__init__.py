"""The embedded default dataset: a procedural captioned-image generator (``generator``) and the
calibration of its labelled task (``calibration``: how learnable it is, what a coarse
reconstruction keeps)."""
