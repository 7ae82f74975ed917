"""The config step, its sections: those for data, training and the transfer set, and the strict base they share."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

# Sources of text, which the language pipeline reads (app/language_tasks.py) instead of the image and table one.
TEXT_DATASETS = ("text", "chat", "text_classification")


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
    # What a source reads; each is passed only when set, and a source that has no use for it refuses it by name.
    class_names: Optional[ClassNames] = Field(
        None, min_length=2, description="the classes' names in label order (any source; default: from the data)")
    image_size: Optional[Union[int, list[int]]] = Field(
        None, description="imagefolder, huggingface: scale and centre-crop to this size (an int: square; [h, w])")
    channels: Optional[Literal[1, 3]] = Field(None, description="imagefolder, huggingface: 1 grey or 3 RGB (default: "
                                                                "from the images)")
    label_column: Optional[str] = Field(None, description="csv, parquet, huggingface: the column of labels "
                                                          "(default: label, or huggingface's ClassLabel column)")
    image_column: Optional[str] = Field(None, description="huggingface: the column of images (default: its Image "
                                                          "column)")
    feature_columns: Optional[list[str]] = Field(
        None, min_length=1, description="csv, parquet: the feature columns (default: every other column)")
    test_path: Optional[str] = Field(None, description="csv, parquet: a second file of test rows")
    test_fraction: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="imagefolder, csv, parquet without a test split: the seeded test share")
    layout: Optional[Literal["channels_first", "channels_last"]] = Field(
        None, description="npz: how image arrays are laid out; [N, H, W, C] is channels_last")
    factory: Optional[str] = Field(None, description="python: package.module:function returning (train, test) "
                                                     "torch Datasets of (inputs, label)")
    factory_options: Optional[dict[str, Any]] = Field(None, description="python: the factory's keyword arguments")
    tokenizer: Optional[str] = Field(None, description="text: a tokenizer folder, tokenizer.json or .gguf file (default: "
                                                       "the teacher's)")
    block_length: Optional[int] = Field(None, ge=2, description="text: the tokens a block predicts (128); "
                                                                "text_classification: the tokens a text is cut to")
    text_column: Optional[str] = Field(None, description="text_classification: the field or column of texts (text)")
    chat_template: Optional[str] = Field(None, description="chat: a Jinja file to render conversations with (default: "
                                                           "the tokenizer's own chat template)")
    pack: bool = Field(False, description="chat: pack several whole conversations into a block, attention and positions "
                                          "never crossing from one into the next (default: one conversation a block)")

    def source_options(self) -> dict[str, Any]:
        """The reader options that are set, by the names the readers take."""
        names = ("class_names", "image_size", "channels", "label_column", "image_column", "feature_columns", "test_path",
                 "test_fraction", "layout", "factory", "factory_options", "tokenizer", "block_length", "text_column",
                 "chat_template", "pack")
        return {name: value for name in names if (value := getattr(self, name)) is not None and value is not False}


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
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp holds the whole student, optimiser and teacher in every process; "
                           "fsdp shards them across the processes (FSDP2)")
    fsdp_blocks: Optional[list[str]] = Field(
        None, description="with parallel: fsdp, the class names of the blocks sharded one at a time (default: "
                          "a Hugging Face model's _no_split_modules; other models are sharded whole)")

    @model_validator(mode="after")
    def _sharding_agrees(self) -> "TrainConfig":
        if self.fsdp_blocks is not None and self.parallel != "fsdp":
            raise ValueError("fsdp_blocks names the blocks FSDP shards; set parallel: fsdp, or remove it")
        if self.parallel == "fsdp" and self.compile:
            raise ValueError("compile and parallel: fsdp are not supported together; remove one")
        return self


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


class TeacherSpec(Strict):
    """A teacher trained outside distillery: the user's PyTorch model (``factory`` and ``weights``), an ONNX
    model (``onnx``), a transformers image classifier (``huggingface``), or its outputs computed elsewhere
    (``outputs``). Exactly one of the four."""

    factory: Optional[str] = Field(None, description="package.module:function that builds the model "
                                                     "(the current folder is importable)")
    options: dict[str, Any] = Field(default_factory=dict, description="the factory's keyword arguments")
    weights: Optional[str] = Field(None, description="its weights: .safetensors, or a torch.save-d state dict")
    onnx: Optional[str] = Field(None, description="an .onnx model, run in ONNX Runtime")
    huggingface: Optional[str] = Field(None, description="a folder of a transformers model (save_pretrained): an image "
                                                         "classifier, whose preprocessor_config.json gives its "
                                                         "preprocessing, or, with text data, a causal language model")
    gguf: Optional[str] = Field(None, description="text data: a causal language model in a .gguf file, dequantised "
                                                  "to float32")
    outputs: Optional[str] = Field(None, description="its logits or probabilities per transfer sample: .npy or "
                                                     ".parquet")
    outputs_kind: Literal["auto", "logits", "probabilities"] = "auto"
    id_column: Optional[str] = Field(None, description="outputs: the column of sample ids (image file paths "
                                                       "relative to data.path, or row numbers); else by row")
    preprocessing: Optional[dict[str, list[float]]] = Field(
        None, description="the mean and std its inputs need, e.g. {mean: [0.5], std: [0.25]}; none: raw inputs")
    class_names: Optional[ClassNames] = Field(None, description="its classes, when not the data's")
    check: bool = Field(True, description="print its accuracy on the test split, so a wrong preprocessing shows")

    @model_validator(mode="after")
    def _one_kind(self) -> "TeacherSpec":
        kinds = [name for name in ("factory", "onnx", "huggingface", "gguf", "outputs")
                 if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError("a teacher entry names exactly one of factory (with weights), onnx, huggingface, gguf or "
                             "outputs; "
                             f"this one names {', '.join(kinds) or 'none'}")
        if (self.factory is None) != (self.weights is None):
            raise ValueError("factory and weights go together: the model the factory builds and the file of its "
                             "weights")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r} is not package.module:function")
        if self.preprocessing is not None and set(self.preprocessing) != {"mean", "std"}:
            raise ValueError("preprocessing gives mean and std, e.g. {mean: [0.5], std: [0.25]}")
        return self

    @property
    def name(self) -> str:
        """How messages name this teacher: its factory, ONNX file or outputs file."""
        return self.factory or self.onnx or self.huggingface or self.gguf or self.outputs

