"""Defaults the command line shows in ``--help``, in a module that imports nothing, so that ``--help`` answers
at once (the modules that use them import torch)."""

# Largest absolute logit difference from PyTorch that an exported model may show (distillery export).
EXPORT_TOLERANCE = 1e-4
# A tune grid of more points than this is refused (distillery tune --max-points).
TUNE_MAX_POINTS = 64
