"""The run config's sections for data, training and the transfer set, and the strict base they share."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    # A float setting of inf or nan (YAML's .inf, .nan) only ever ends in a non-finite loss: refused here.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(Strict):
    shift: int = Field(0, ge=0, description="random translation by up to this many pixels")
    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels")
    flip: bool = Field(False, description="random horizontal flip")

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.crop_padding > 0 or self.flip


def _as_text(value: Any) -> Any:
    return [str(name) for name in value] if isinstance(value, list) else value


# YAML reads a class named 3 as the number 3; class names are text.
ClassNames = Annotated[list[str], BeforeValidator(_as_text)]


class DataConfig(Strict):
    dataset: str = "digits"
    path: Optional[str] = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    train_limit: Optional[int] = Field(None, ge=1, description="use only this many training samples")
    test_limit: Optional[int] = Field(None, ge=1, description="use only this many test samples")
    normalize: bool = True
    augment: AugmentConfig = AugmentConfig()
    classes: Optional[ClassNames] = Field(
        None, min_length=1, description="train on these classes only (by name); the model predicts just them")


class TrainConfig(Strict):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: bfloat16 autocast for training steps")
    compile: bool = Field(False, description="compile the student with torch.compile")
    grad_clip: Optional[float] = Field(None, gt=0.0, description="clip the gradients' global norm to this value")
    checkpoint_every_steps: Optional[int] = Field(
        None, ge=1, description="save the full training state (for --resume) every this many steps, "
                                "besides after every epoch")


class TransferConfig(Strict):
    """The transfer set a student distils on, when it is not simply the labelled training split."""

    labels: bool = Field(True, description="false: soft targets only, the hard-label term is dropped")
    classes: Optional[list[str]] = Field(None, description="keep only these classes (by name)")
    exclude_classes: Optional[list[str]] = Field(None, description="leave these classes out (by name)")
    dataset: Optional[str] = Field(None, description="take the transfer set from this source's training split")
    path: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1, description="use only this many transfer samples")
    labeled_fraction: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="keep the labels of this seeded share of samples; the rest: soft targets only")

    @model_validator(mode="after")
    def _labels_agree(self) -> "TransferConfig":
        if self.labeled_fraction is not None and not self.labels:
            raise ValueError("labeled_fraction keeps some labels but labels is false; remove one of the two")
        return self

    @field_validator("classes", "exclude_classes", mode="before")
    @classmethod
    def _names_as_text(cls, value: Any) -> Any:
        # YAML reads a class named 3 as a number.
        return [str(name) for name in value] if isinstance(value, list) else value


def require_model_name(spec: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(spec.get("name"), str):
        raise ValueError("needs a 'name' (mlp, cnn, resnet or package.module:function)")
    return spec
