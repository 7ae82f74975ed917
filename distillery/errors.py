"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""


class DistilleryError(Exception):
    """A problem with the user's input; the message names the bad value and the fix."""


class ConfigError(DistilleryError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(DistilleryError):
    """A dataset file is missing, malformed or inconsistent."""


class ModelError(DistilleryError):
    """A model spec cannot be built, or two models do not fit together."""


class CheckpointError(DistilleryError):
    """A checkpoint is missing, unreadable or not one of ours."""


class RunExistsError(DistilleryError):
    """The output directory already holds a finished run."""


class NumericalError(DistilleryError):
    """Training produced a NaN or infinite loss."""


class TrainingInterrupted(DistilleryError):
    """SIGINT or SIGTERM stopped training after a finished step, with the training state saved to resume from.

    ``exit_code`` is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as shells report it.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
