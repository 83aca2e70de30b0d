"""The lowest room: strict configs, atomic file writes and content fingerprints, byte-stable
tensor files, pretrained-weight resolution, progress lines and the distributed helpers. Imports
nothing else of the project."""
