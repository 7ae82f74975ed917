"""Hidden-state matching for transformer students: chosen student hidden states, each through a learned linear
projection, pulled toward chosen teacher hidden states at the counted positions (DistilBERT's cosine alignment and
DistillKit's projected hidden states, here as a mean squared error)."""
from __future__ import annotations

import torch
from torch import nn

from distillery.errors import ConfigError


def even_hidden_map(student_blocks: int, teacher_blocks: int) -> dict[int, int]:
    """Student hidden state i (the output of block i; 0 the embeddings) to the teacher's of the block the student's
    block i was taken from under :func:`~distillery.models.text_transformers.every_kth_block_map`:
    round(i' · (T − 1) / (S − 1)) + 1 for i = i' + 1. Example: 3 student blocks of a 5-block teacher -> {1: 1, 2: 3, 3: 5}."""
    if student_blocks == 1:
        return {1: 1}
    return {index + 1: round(index * (teacher_blocks - 1) / (student_blocks - 1)) + 1
            for index in range(student_blocks)}


def hidden_state_match(student: nn.Module, teacher: nn.Module, weight: float,
                       layer_map: dict[int, int] | None) -> "HiddenStateMatch | None":
    """The hidden-state term of a method, None at ``weight`` 0: ``layer_map`` (default :func:`even_hidden_map`)
    between two Hugging Face transformers, sized from their configs. Raises ConfigError for a negative weight, a
    map without a weight, or models without a transformer config (for those, ``fitnet`` matches named layers)."""
    if weight < 0:
        raise ConfigError(f"hidden_weight must be >= 0, got {weight}")
    if weight == 0:
        if layer_map:
            raise ConfigError("hidden_map is set but hidden_weight is 0; give hidden_weight > 0 to match hidden states")
        return None
    configs = [getattr(model, "config", None) for model in (student, teacher)]
    if any(not hasattr(config, "num_hidden_layers") or not hasattr(config, "hidden_size") for config in configs):
        raise ConfigError("hidden_weight matches the hidden states of Hugging Face transformers (a student and "
                          "teacher with a config of num_hidden_layers and hidden_size); for other models use "
                          "method fitnet with named layers")
    layers = (configs[0].num_hidden_layers, configs[1].num_hidden_layers)
    return HiddenStateMatch(layer_map or even_hidden_map(*layers), student_width=configs[0].hidden_size,
                            teacher_width=configs[1].hidden_size, student_layers=layers[0], teacher_layers=layers[1])


class HiddenStateMatch(nn.Module):
    """The projections and the loss: mean over mapped pairs of the mean squared error between the projected
    student state and the teacher state, over counted positions and hidden units.

    ``layer_map`` maps student hidden-state indices to teacher ones (``hidden_states`` of a Hugging Face model's
    output, 0 the embeddings, i the output of block i). A projection starts as the identity when the widths agree
    (a student started from its teacher is already aligned), else as a random linear map. Example::

        match = HiddenStateMatch({1: 3, 2: 6}, student_width=256, teacher_width=576)
        loss = match(student_out.hidden_states, teacher_out.hidden_states, batch.mask)
    """

    def __init__(self, layer_map: dict[int, int], *, student_width: int, teacher_width: int, student_layers: int,
                 teacher_layers: int) -> None:
        super().__init__()
        for student_index, teacher_index in layer_map.items():
            if not 0 <= student_index <= student_layers or not 0 <= teacher_index <= teacher_layers:
                raise ConfigError(f"hidden_map {student_index}: {teacher_index} names a hidden state the models do not "
                                  f"have: the student has 0-{student_layers}, the teacher 0-{teacher_layers} "
                                  "(0 the embeddings, i the output of block i)")
        self.layer_map = {int(key): int(value) for key, value in layer_map.items()}
        self.projections = nn.ModuleList(nn.Linear(student_width, teacher_width, bias=False) for _ in self.layer_map)
        if student_width == teacher_width:
            for projection in self.projections:
                nn.init.eye_(projection.weight)

    def forward(self, student_states: tuple[torch.Tensor, ...], teacher_states: tuple[torch.Tensor, ...],
                mask: torch.Tensor | None) -> torch.Tensor:
        total = student_states[0].new_zeros((), dtype=torch.float32)
        for projection, (student_index, teacher_index) in zip(self.projections, self.layer_map.items()):
            student, teacher = projection(student_states[student_index]).float(), teacher_states[teacher_index].float()
            if mask is not None:
                student, teacher = student[mask.bool()], teacher[mask.bool()]
            if student.numel():
                total = total + ((student - teacher) ** 2).mean()
        return total / len(self.layer_map)
