"""The run config's distill: section: the teacher, the method and the method's options."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from distillery.app.config_sections import Strict, TeacherSpec, require_model_name

# The methods born-again generations can distil with: each learns from one teacher's logits.
LOGIT_METHODS = ("hinton", "logit_mse", "dkd", "dist")


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
    method: Literal["hinton", "logit_mse", "dkd", "dist", "fitnet", "attention", "deep_supervision", "mutual",
                    "online", "function_matching", "token_kd"] = "hinton"
    temperature: Optional[float] = Field(None, gt=0.0, description="hinton 4, dkd 4, dist 1 when absent")
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0, description="weight of the hard-label term (0.5)")
    standardize: Optional[bool] = Field(None, description="z-score logits before the soft loss")
    calibrate_merge: Optional[int] = Field(
        None, ge=1, description="teachers of different class sets: fit the merge's gate on this many labelled "
                                "training samples per class (e.g. 10), used even with transfer.labels: false")
    mix: Optional[Literal["mixup", "cutmix", "none"]] = Field(
        None, description="function_matching: how a batch is mixed before teacher and student see it (mixup)")
    ce_weight: Optional[float] = Field(None, ge=0.0, description="dkd: weight of the hard-label term")
    tckd_weight: Optional[float] = Field(None, ge=0.0, description="dkd: target-class term weight")
    nckd_weight: Optional[float] = Field(None, ge=0.0, description="dkd: non-target-class term weight")
    warmup_epochs: Optional[int] = Field(None, ge=0, description="dkd: epochs over which the loss ramps in")
    beta: Optional[float] = Field(None, ge=0.0, description="dist: inter-class relation weight; token_kd with "
                                                            "divergence jsd: the mixture's teacher weight (0.5)")
    divergence: Optional[Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "total_variation"]] = Field(
        None, description="token_kd: the divergence between the teacher's and student's next-token distributions "
                          "(forward_kl)")
    top_k: Optional[int] = Field(
        None, ge=1, description="token_kd: learn the teacher's top k next-token probabilities and one bucket for the "
                                "rest, computed once and memory-mapped (teacher_cache auto) or live (off)")
    on_policy: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="token_kd: GKD's lambda, the share of batches whose continuations the "
                                          "student samples and the teacher scores (0)")
    sample_temperature: Optional[float] = Field(None, ge=0.0, description="token_kd with on_policy: the student's "
                                                                          "sampling temperature (1; 0 greedy)")
    sample_tokens: Optional[int] = Field(None, ge=1, description="token_kd with on_policy: the most tokens the "
                                                                 "student writes (to the block's end)")
    prompt_tokens: Optional[int] = Field(None, ge=1, description="token_kd with on_policy on packed text: the "
                                                                 "tokens kept as the prompt (half the block)")
    hidden_weight: Optional[float] = Field(None, ge=0.0, description="token_kd, hinton, dkd, dist, logit_mse "
                                                                     "on transformers: weight of hidden-state matching "
                                                                     "through learned projections (0: off)")
    hidden_map: Optional[dict[int, int]] = Field(None, description="with hidden_weight: student -> teacher hidden-state index "
                                                                   "(0 embeddings, i block i; default: each student "
                                                                   "block to the teacher block it started from)")
    skew: Optional[float] = Field(None, ge=0.0, le=1.0, description="token_kd with skew_kl: the teacher's share of the "
                                                                     "skewed mixture (0.1)")
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
            require_model_name(spec)
        return value

    @field_validator("teacher_model")
    @classmethod
    def _teacher_model_has_name(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        return value if value is None else require_model_name(value)

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
            raise ValueError("method online needs teacher_model: the model of the teacher trained beside the student, "
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
