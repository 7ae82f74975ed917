"""Run configuration: YAML read as data, validated by pydantic, overridable with key=value pairs."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillery.errors import ConfigError


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


# The methods born-again generations can distil with: each learns from one teacher's logits.
LOGIT_METHODS = ("hinton", "logit_mse", "dkd", "dist")


class DistillConfig(Strict):
    """Which teacher and method; a method option left out (null) takes that method's own default."""

    teacher: Union[str, list[str], None] = Field(
        None, description="the teacher's run directory or checkpoint, or a list: an ensemble; "
                          "methods that train their own teachers take none")
    teacher_weights: Optional[list[float]] = Field(None, description="ensemble: one weight per teacher (equal)")
    ensemble: Literal["probabilities", "logits"] = Field(
        "probabilities", description="ensemble: average the tempered probabilities (Hinton) or the logits")
    init_from_teacher: bool = Field(False, description="copy the (first) teacher's weights where names and shapes match")
    init_layer_map: Optional[dict[str, str]] = Field(None, description="student module path -> teacher module path")
    method: Literal["hinton", "logit_mse", "dkd", "dist", "fitnet", "attention", "deep_supervision", "mutual",
                    "online"] = "hinton"
    temperature: Optional[float] = Field(None, gt=0.0, description="hinton 4, dkd 4, dist 1 when absent")
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0, description="weight of the hard-label term (0.5)")
    standardize: Optional[bool] = Field(None, description="z-score logits before the soft loss")
    ce_weight: Optional[float] = Field(None, ge=0.0, description="dkd: weight of the hard-label term")
    tckd_weight: Optional[float] = Field(None, ge=0.0, description="dkd: target-class term weight")
    nckd_weight: Optional[float] = Field(None, ge=0.0, description="dkd: non-target-class term weight")
    warmup_epochs: Optional[int] = Field(None, ge=0, description="dkd: epochs over which the loss ramps in")
    beta: Optional[float] = Field(None, ge=0.0, description="dist: inter-class relation weight")
    gamma: Optional[float] = Field(None, ge=0.0, description="dist: intra-class relation weight")
    student_layer: Optional[str] = Field(None, description="fitnet: the student module whose output is hinted")
    teacher_layer: Optional[str] = Field(None, description="fitnet: the teacher module giving the hint")
    hint_weight: Optional[float] = Field(None, ge=0.0, description="fitnet: weight of the hint loss")
    student_layers: Optional[list[str]] = Field(None, description="attention, deep_supervision: student module paths")
    teacher_layers: Optional[list[str]] = Field(None, description="attention: teacher module paths, pairwise")
    at_weight: Optional[float] = Field(None, ge=0.0, description="attention: weight of the attention loss")
    p: Optional[float] = Field(None, gt=0.0, description="attention: exponent of the attention map")
    teacher_cache: str = Field(
        "auto", description="where the teacher's logits are cached when its inputs repeat: auto (a shared cache "
                            "directory, $DISTILLERY_CACHE or ~/.cache/distillery), off, or a file path")
    teacher_views: Optional[int] = Field(
        None, ge=1, description="with data.augment: cache the teacher on this many seeded augmented views, "
                                "cycled through by epoch, instead of running it live")
    feature_cache_mb: float = Field(
        1024.0, ge=0.0, description="fitnet, attention: the most megabytes the teacher's cached features may take; "
                                    "beyond it the teacher runs live every batch")
    hint_teacher: Optional[int] = Field(
        None, ge=0, description="fitnet, attention: which teacher of the list gives the features (0); "
                                "teacher layer paths are inside that teacher")
    kd_weight: Optional[float] = Field(None, ge=0.0, description="fitnet, attention: weight of an added Hinton KD term")
    aux_weight: Optional[float] = Field(None, ge=0.0,
                                        description="deep_supervision: weight of the auxiliary heads' loss")
    generations: Optional[int] = Field(None, ge=1, description="born-again: distil this many generations, each "
                                                                "from the one before (a logit method)")

    peers: Optional[list[dict[str, Any]]] = Field(
        None, description="mutual: model specs (like model:) of the peers trained from scratch beside the student")
    teacher_model: Optional[dict[str, Any]] = Field(
        None, description="online: model spec (like model:) of a teacher trained from scratch beside the student")

    @field_validator("teacher_cache", mode="before")
    @classmethod
    def _off_is_text(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; `teacher_cache: off` means the setting off.
        return "off" if value is False else value

    @field_validator("peers")
    @classmethod
    def _peers_have_names(cls, value: Optional[list[dict[str, Any]]]) -> Optional[list[dict[str, Any]]]:
        for spec in value or []:
            _require_model_name(spec)
        return value

    @field_validator("teacher_model")
    @classmethod
    def _teacher_model_has_name(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        return value if value is None else _require_model_name(value)

    @model_validator(mode="after")
    def _online_settings_agree(self) -> "DistillConfig":
        if self.peers is not None and self.method != "mutual":
            raise ValueError(f"peers is for method: mutual, but the method is {self.method!r}; "
                             "remove peers or set method: mutual")
        if self.teacher_model is not None and self.method != "online":
            raise ValueError(f"teacher_model is for method: online, but the method is {self.method!r}; "
                             "remove teacher_model or set method: online")
        if self.method == "mutual" and not self.peers:
            raise ValueError("method mutual needs peers: a list of model specs to train beside the student, "
                             "e.g. peers: [{name: mlp, hidden: [32]}]")
        if self.method == "online" and self.teacher_model is None:
            raise ValueError("method online needs teacher_model: the spec of the teacher trained beside the student, "
                             "e.g. teacher_model: {name: cnn}")
        if self.method in ("mutual", "online") and self.teacher is not None:
            raise ValueError(f"method {self.method} trains its models from scratch and takes no pretrained teacher; "
                             "remove distill.teacher, or choose a method that distils from it (hinton)")
        return self

    @model_validator(mode="after")
    def _self_distillation_settings_agree(self) -> "DistillConfig":
        if self.method == "deep_supervision" and self.teacher is not None:
            raise ValueError("deep_supervision trains without a teacher (the student's final head teaches its "
                             "auxiliary heads); remove distill.teacher")
        if self.generations is not None:
            if self.method not in LOGIT_METHODS:
                raise ValueError(f"generations needs a logit method ({', '.join(LOGIT_METHODS)}), not "
                                 f"{self.method!r}; set distill.method")
            if self.init_from_teacher:
                raise ValueError("generations starts every generation from a fresh model; "
                                 "remove init_from_teacher")
        return self

    @model_validator(mode="after")
    def _teacher_settings_agree(self) -> "DistillConfig":
        if self.teacher is None:
            if self.teacher_weights is not None or self.init_from_teacher:
                raise ValueError("teacher_weights and init_from_teacher need a teacher; set distill.teacher")
            return self
        count = len(self.teacher) if isinstance(self.teacher, list) else 1
        if count == 0:
            raise ValueError("the list of teachers is empty; name at least one run directory")
        if self.teacher_weights is not None and len(self.teacher_weights) != count:
            raise ValueError(f"teacher_weights has {len(self.teacher_weights)} weights for {count} teachers; "
                             "give one weight per teacher")
        if self.init_layer_map is not None and not self.init_from_teacher:
            raise ValueError("init_layer_map is set but init_from_teacher is false; set init_from_teacher: true")
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


class RunConfig(Strict):
    output_dir: str = Field(..., description="the run's own directory: new, empty, or an earlier run's")
    allow_factories: list[str] = Field(
        default_factory=list, description="package.module:function factories that checkpoints this run loads "
                                          "(teachers) may name as their architecture; only built-in ones otherwise")
    seed: int = 0
    device: str = "auto"
    role: Optional[Literal["teacher", "scratch", "distilled"]] = Field(
        None, description="how the report labels the run; default: scratch for train, distilled for distill")
    data: DataConfig = DataConfig()
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "mlp"})
    train: TrainConfig = TrainConfig()
    distill: Optional[DistillConfig] = None
    transfer: Optional[TransferConfig] = None
    measure_latency: bool = True
    progress: bool = True

    @model_validator(mode="after")
    def _transfer_needs_a_teacher(self) -> "RunConfig":
        if self.transfer is not None and self.distill is None:
            raise ValueError("transfer: describes a distillation's transfer set; add a distill: section or remove it")
        if self.distill is not None and self.distill.teacher_views and not self.data.augment.enabled:
            raise ValueError("teacher_views fixes augmented views, but data.augment is off, so the teacher's outputs "
                             "are cached for the plain inputs anyway; remove distill.teacher_views")
        if self.transfer is not None and not self.transfer.labels and self.distill.alpha not in (None, 0.0):
            raise ValueError(f"transfer.labels is false, so there is no hard-label term for distill.alpha "
                             f"({self.distill.alpha}) to weigh: without labels alpha is 0 and the soft term has all "
                             "the weight; remove distill.alpha")
        partly_labelled = self.transfer is not None and (
            not self.transfer.labels or (self.transfer.labeled_fraction or 1.0) < 1.0)
        if partly_labelled and self.distill.method == "dkd":
            raise ValueError("method 'dkd' splits every distribution at the true class, so it needs every transfer "
                             "sample labelled; use 'hinton' or 'dist', or drop labels: false / labeled_fraction")
        return self

    @model_validator(mode="after")
    def _self_distillation_has_its_data(self) -> "RunConfig":
        if self.transfer is None or self.distill is None:
            return self
        if self.distill.generations is not None:
            raise ValueError("generations train every generation on the training split; remove transfer:")
        if self.distill.method == "deep_supervision" and not self.transfer.labels:
            raise ValueError("deep_supervision needs labels; set transfer.labels: true")
        return self

    @model_validator(mode="after")
    def _models_from_scratch_need_labels(self) -> "RunConfig":
        if self.distill is not None and self.distill.method in ("mutual", "online") and self.transfer is not None \
                and not self.transfer.labels:
            raise ValueError(f"method {self.distill.method} trains its models from scratch, so it needs labels; "
                             "set transfer.labels: true")
        return self

    @field_validator("model")
    @classmethod
    def _model_has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _require_model_name(value)

    @field_validator("output_dir")
    @classmethod
    def _output_dir_names_a_directory(cls, value: str) -> str:
        # "" and "." would make the current folder the run's, and a run replaces its own files there.
        if not value.strip() or Path(value) == Path("."):
            raise ValueError(f"output_dir {value!r} names the current folder; give the run a directory of its "
                             "own, e.g. runs/student")
        return value

    @field_validator("allow_factories")
    @classmethod
    def _factories_are_named(cls, value: list[str]) -> list[str]:
        for name in value:
            module, _, function = name.partition(":")
            if not module or not function:
                raise ValueError(f"{name!r} is not a factory name; write package.module:function")
        return value


def _require_model_name(spec: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(spec.get("name"), str):
        raise ValueError("needs a 'name' (mlp, cnn, resnet or package.module:function)")
    return spec


def _known_keys(model_class: type[BaseModel], location: tuple) -> list[str]:
    # Walk the schema down to the section the bad key sits in, to suggest a correction.
    for part in location[:-1]:
        field = model_class.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if nested is None:
            return []
        model_class = nested
    return list(model_class.model_fields)


def _describe(error: ValidationError, source: str) -> str:
    # An unknown key usually explains the missing one too (a typo), so report it first.
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    location = tuple(first["loc"])
    key = ".".join(str(part) for part in location)
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(location[-1]), _known_keys(RunConfig, location), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; remove it"
        return f"{source}: unknown key {key!r}{hint}"
    if first["type"] == "missing":
        return f"{source}: {key} is required; add it to the config"
    if first["type"] == "value_error":
        # Our own checks already name the problem and the fix.
        where = f"{key}: " if key else ""  # a check on the whole config has no single key to name
        return f"{source}: {where}{first['msg'].removeprefix('Value error, ')}"
    return f"{source}: {key} = {first.get('input')!r} is invalid: {first['msg'].lower()}; fix it in the config or with --set {key}=..."


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "distill.alpha=0.1"]`` -> a nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"override {pair!r} is not key=value, e.g. --set train.epochs=5")
        *parents, leaf = key.split(".")
        if not all(parents) or not leaf:
            raise ConfigError(f"override {pair!r} has an empty key part; write e.g. --set train.epochs=5")
        target = nested
        for depth, part in enumerate(parents):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {pair!r} conflicts with another override: {section} is a value, not a section")
        try:
            target[leaf] = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError, ValueError):
            raise ConfigError(f"override {pair!r} has a value that is not valid YAML; quote strings, close brackets") from None
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(document: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> RunConfig:
    """Validate a config mapping (plus ``key=value`` overrides) into a RunConfig."""
    merged = merge(document, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run configuration with ``yaml.safe_load`` and validate it.

    Example::

        config = load_config("configs/fashion_mnist_distill.yaml", ["train.epochs=3"])
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; give the YAML file inside it, e.g. {path / 'run.yaml'}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start} cannot be read); save it as UTF-8 "
                          "YAML") from None
    except OSError as error:
        raise ConfigError(f"cannot read config {path} ({error.strerror})") from None
    document = _parse_yaml(text, path)
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (output_dir:, model:, ...), not {type(document).__name__}")
    return build_config(document, overrides, source=str(path))


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        said = ", ".join(part for part in (getattr(error, "context", None), getattr(error, "problem", None)) if part)
        detail = f" ({said})" if said else ""
        raise ConfigError(f"{path} is not valid YAML{where}{detail}; check indentation and colons") from None
    except (RecursionError, ValueError, TypeError) as error:
        # The reader's own failures on hostile input (nesting beyond the stack, absurd numbers).
        raise ConfigError(f"{path} cannot be read as YAML ({type(error).__name__}); simplify it") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
