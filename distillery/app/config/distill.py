"""The config step, the distill: section: the teacher, the method and the method's options."""
from __future__ import annotations

import difflib
from typing import Any, Literal, Optional, Union

from pydantic import Field, SerializeAsAny, field_validator, model_serializer, model_validator

from distillery.app.config.sections import Strict, TeacherSpec
from distillery.methods import MethodOptions, Needs, method_class, method_names


DEFAULT_METHOD = "hinton"  # what distill: without method: distils with


def logit_methods() -> list[str]:
    """The methods born-again generations can distil with: each learns from one teacher's logits alone."""
    return [name for name in method_names() if method_class(name).needs.generations]


def _every_option() -> frozenset[str]:
    return frozenset(key for name in method_names() for key in method_class(name).Options.model_fields)


def _check_method_choice(name: str, settings: dict[str, Any]) -> None:
    """What the method's needs say about the rest of distill:, checked before its options."""
    needs = method_class(name).needs
    if not needs.teacher and settings.get("teacher") is not None:
        raise ValueError(f"{name} trains without a teacher (its models learn from scratch or from the student "
                         "itself); remove distill.teacher, or choose a method that distils from one (hinton)")
    if settings.get("generations") is not None and not needs.generations:
        raise ValueError(f"generations needs a logit method ({', '.join(logit_methods())}), not {name!r}; set "
                         "distill.method")


def _refuse_other_methods_options(name: str, options_type: type[MethodOptions], given: dict[str, Any]) -> None:
    """A key that is another method's option only: say whose (a key no method knows is left to the Options model,
    which names it as unknown)."""
    for key in given:
        if key in options_type.model_fields or key not in _every_option():
            continue
        owners = [other for other in method_names() if key in method_class(other).Options.model_fields]
        if len(owners) == 1:
            raise ValueError(f"{key} is for method: {owners[0]}, but the method is {name!r}; remove {key} or set "
                             f"method: {owners[0]}")
        takes = ", ".join(options_type.model_fields) or "no options"
        raise ValueError(f"method {name!r} does not take {key}; it takes: {takes}")


def _require_options(name: str, options_type: type[MethodOptions], given: dict[str, Any]) -> None:
    for key, field in options_type.model_fields.items():
        if field.is_required() and given.get(key) is None:
            raise ValueError(f"method {name} needs {key}: {field.description}; set distill.{key} ({name})")


class DistillConfig(Strict):
    """Which teacher and method; a method option left out (null) takes that method's own default."""

    teacher: Union[str, TeacherSpec, list[Union[str, TeacherSpec]], None] = Field(
        None, description="the teacher's run directory or checkpoint, a spec of a teacher trained elsewhere "
                          "(factory and weights, onnx, or outputs), or a list: an ensemble; "
                          "methods that train their own teachers take none")
    teacher_weights: Optional[list[float]] = Field(None, description="ensemble: one weight per teacher (equal)")
    ensemble: Literal["probabilities", "logits"] = Field(
        "probabilities", description="ensemble: average the tempered probabilities (Hinton) or the logits")
    init_from_teacher: bool = Field(False, description="copy the (first) teacher's weights where names and shapes match")
    init_layer_map: Optional[dict[str, str]] = Field(None, description="student module path -> teacher module path")
    method: str = Field(DEFAULT_METHOD, description="the registered name of the method (hinton, dkd, dist, ...); its own "
                                             "options sit beside it in distill:")
    calibrate_merge: Optional[int] = Field(
        None, ge=1, description="teachers of different class sets: fit the merge's gate on this many labelled "
                                "training samples per class (e.g. 10), used even with transfer.labels: false")
    teacher_cache: str = Field(
        "auto", description="where the teacher's logits are cached when its inputs repeat: auto (a shared cache "
                            "directory, $DISTILLERY_CACHE or ~/.cache/distillery), off, or a file path")
    top_k_storage: Literal["float32", "float16", "compact"] = Field(
        "float32", description="with top-k targets: how the cache stores the teacher's log-probabilities: float32 "
                               "(4 bytes each), float16 (2) or compact (12-bit knots, 146 bytes a token at k = 64 "
                               "with the ids)")
    teacher_logprobs: Optional[str] = Field(
        None, description="language models: a .jsonl or .parquet file of the teacher's per-position top-k "
                          "log-probabilities made elsewhere (vLLM prompt_logprobs, or {token_id, logprob} lists), "
                          "learned instead of running the teacher; distill.teacher may then be left out")
    teacher_views: Optional[int] = Field(
        None, ge=1, description="with data.augment: cache the teacher on this many seeded augmented views, "
                                "cycled through by epoch, instead of running it live")
    feature_cache_mb: float = Field(
        1024.0, ge=0.0, description="fitnet, attention: the most megabytes the teacher's cached features may take; "
                                    "beyond it the teacher runs live every batch")
    hint_teacher: Optional[int] = Field(
        None, ge=0, description="fitnet, attention: which teacher of the list gives the features (0); "
                                "teacher layer paths are inside that teacher")
    generations: Optional[int] = Field(None, ge=1, description="born-again: distil this many generations, each "
                                                                "from the one before (a logit method)")
    options: SerializeAsAny[MethodOptions] = Field(
        default_factory=lambda: method_class(DEFAULT_METHOD).Options(),
        description="the method's own options, written beside method: in the YAML (see each method's Options)")

    @model_validator(mode="before")
    @classmethod
    def _method_options(cls, data: Any) -> Any:
        """The keys beside ``method:`` that are not the teacher's or the cache's are the method's own options,
        validated by its Options model."""
        if not isinstance(data, dict) or isinstance(data.get("options"), MethodOptions):
            return data
        own = {key: value for key, value in data.items() if key in cls.model_fields}
        # null is an option left out (the method's default), whichever method it belongs to.
        given = {key: value for key, value in data.items() if key not in cls.model_fields and value is not None}
        name = own.get("method", DEFAULT_METHOD)
        if name not in method_names():
            return own  # the method field's own check names it; its options cannot be read without it
        _check_method_choice(name, own)
        options_type = method_class(name).Options
        _refuse_other_methods_options(name, options_type, given)
        _require_options(name, options_type, given)
        own["options"] = options_type.model_validate(given)
        return own

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        # Written as it is read: the options the user gave beside method:, so a saved config loads back the same.
        data = handler(self)
        data.pop("options", None)
        return {**data, **self.options.model_dump(mode="json", exclude_unset=True)}

    def __getattr__(self, name: str) -> Any:
        # config.distill.alpha reads the method's option, as it did when every option was a field here; an option
        # of another method reads None, as an option left out did.
        options = self.__dict__.get("options")
        if options is not None and name in type(options).model_fields:
            return getattr(options, name)
        if not name.startswith("_") and name in _every_option():
            return None
        return super().__getattr__(name)

    @property
    def needs(self) -> Needs:
        """What the configured method needs and reads (see :class:`~distillery.methods.Needs`)."""
        return method_class(self.method).needs

    @classmethod
    def known_keys(cls) -> list[str]:
        """Every key distill: may hold: the teacher's and the cache's, and any method's options."""
        return [key for key in cls.model_fields if key != "options"] + sorted(_every_option())

    @field_validator("method")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in method_names():
            close = difflib.get_close_matches(name, method_names(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown method {name!r}; {hint}choose one of: {', '.join(method_names())}")
        return name

    @field_validator("teacher_cache", mode="before")
    @classmethod
    def _off_is_text(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; `teacher_cache: off` means the setting off.
        return "off" if value is False else value

    @model_validator(mode="after")
    def _generations_start_fresh(self) -> "DistillConfig":
        if self.generations is not None and self.init_from_teacher:
            raise ValueError("generations starts every generation from a fresh model; remove init_from_teacher")
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
