"""Config, the first step of a run: the schema of a run's YAML (pydantic) and reading, overriding and writing it."""
from distillery.app.config.distill import DistillConfig
from distillery.app.config.run_config import RunConfig
from distillery.app.config.sections import AugmentConfig, DataConfig, TeacherSpec, TrainConfig, TransferConfig

__all__ = ["AugmentConfig", "DataConfig", "DistillConfig", "RunConfig", "TeacherSpec", "TrainConfig",
           "TransferConfig"]
