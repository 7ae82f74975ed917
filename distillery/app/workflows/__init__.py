"""Clients of the run skeleton: the entry of a config-driven run (``run``), born-again generations, tune, the demo,
generation from a finished language model, and the in-memory Python API (``api``, ``self_distillation``)."""
