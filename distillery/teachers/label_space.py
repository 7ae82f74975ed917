"""Teachers trained on different class sets, merged into one teacher over the union of their classes."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
from torch import nn

from distillery.errors import ConfigError, ModelError
from distillery.teachers.ensemble import normalized_weights
from distillery.teachers.merge_gate import MergeGate, fit_gate, head_input, teacher_features


class LabelSpaceMerge(nn.Module):
    """Frozen teachers, each predicting its own named classes, acting as one teacher over ``classes``.

    The rule, a *logit union*: the merged logit of class c is the weighted mean of z_i(c) over the
    teachers i whose classes include c. A loss then softens the merged logits at its temperature
    exactly as it would one teacher's, so every logit method and precomputed teacher logits work.

    Why: teacher i, trained on the subset S_i, only knows the distribution within S_i:
    softmax(z_i)(c) = q(c) / Q_i, with Q_i the unknown total mass of S_i. The ratios within S_i
    are taken from it as they are; for the split between subsets the only signal it carries is the
    size of its unnormalised evidence exp(logsumexp(z_i)) (the "energy" score of Liu et al. 2020),
    and placing its logits side by side gives S_i exactly that mass. A class several teachers know
    gets the mean of their logits. Independently trained teachers' logit scales are not calibrated
    to each other, so without labels the split between subsets can be badly off; with labels the
    softmax-based methods gate the targets by the true class (:meth:`gate_by_labels`).
    docs/label-merge.md has the derivation and the measurements.

    Example::

        digits = [str(d) for d in range(10)]
        teacher = LabelSpaceMerge([low, high], [digits[:5], digits[5:]], digits)
        targets = torch.softmax(teacher(inputs) / 4.0, dim=-1)   # over all ten digits
    """

    def __init__(self, teachers: Sequence[nn.Module], teacher_classes: Sequence[Sequence[str]],
                 classes: Sequence[str], *, weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not teachers or len(teacher_classes) != len(teachers):
            raise ConfigError(f"a label-space merge needs one class list per teacher; got {len(teachers)} teachers "
                              f"and {len(teacher_classes)} class lists")
        names = list(names) if names is not None else [f"teacher {i + 1}" for i in range(len(teachers))]
        classes = [str(name) for name in classes]
        own_classes = [[str(name) for name in own] for own in teacher_classes]
        weights = normalized_weights(weights, len(teachers))
        coverage = torch.zeros(len(classes))
        for index, (own, name, weight) in enumerate(zip(own_classes, names, weights)):
            positions = torch.tensor(_positions(own, classes, name))
            coverage.index_add_(0, positions, torch.full((len(own),), weight))
            self.register_buffer(f"positions_{index}", positions, persistent=False)
        _check_covered(classes, coverage, own_classes, names)
        self.members = nn.ModuleList(teachers)
        self.classes = classes
        self.teacher_weights = weights
        self.register_buffer("coverage", coverage, persistent=False)
        # same_teacher[y, c]: some teacher knows both y and c, so it can say how c compares with y.
        known = torch.zeros(len(teachers), len(classes), dtype=torch.bool)
        for index, own in enumerate(own_classes):
            known[index, getattr(self, f"positions_{index}")] = True
        self.register_buffer("same_teacher", (known.T.float() @ known.float()) > 0, persistent=False)
        self.gate: MergeGate | None = None  # set by calibrate(): then the merge is a mixture, not a logit union
        self.gate_reads_representations = False

    def extra_repr(self) -> str:
        # Part of the teacher-output cache's fingerprint: positions and weights live outside the state_dict.
        return f"classes={self.classes}, weights={list(self.teacher_weights)}"

    def gate_by_labels(self, merged_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """With a sample's true class y known, keep only the classes of the teachers that know y.

        The split of mass between teachers' class sets is what the logit union guesses worst (a
        teacher never saw the other sets' images, and may call them its own with large logits); a
        label settles it. Within the kept classes the targets are the merged ones, so the teachers'
        knowledge of how similar those classes are survives. Samples labelled -1 (unlabelled) keep
        the plain union.
        """
        labelled = labels >= 0
        allowed = torch.ones_like(merged_logits, dtype=torch.bool)
        allowed[labelled] = self.same_teacher.to(merged_logits.device)[labels[labelled]]
        # A large finite gap rather than -inf: a zero-probability class must not turn 0 · log 0 into NaN.
        return merged_logits.masked_fill(~allowed, -1e4)

    def member_logits(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Every teacher's logits over its own classes, checked against the class list it was given."""
        return self.member_outputs(inputs, representations=False)[0]

    def member_outputs(self, inputs: torch.Tensor, representations: bool = True
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Every teacher's logits (as :meth:`member_logits`) and, with ``representations``, its representation, the
        input of its last linear layer ``[B, ...]``; None for those unless every teacher has one per sample."""
        outputs, read = [], []
        for index, member in enumerate(self.members):
            positions = getattr(self, f"positions_{index}")
            with head_input(member) if representations else nullcontext([]) as captured:
                logits = member(inputs)
            read.append(captured[-1] if captured else None)
            if logits.dim() != 2 or logits.shape[1] != len(positions):
                raise ModelError(f"teacher {index + 1} of the merge outputs {tuple(logits.shape[1:])} but names "
                                 f"{len(positions)} classes; give each teacher the class list it predicts")
            outputs.append(logits)
        usable = representations and all(r is not None and r.dim() >= 2 and len(r) == len(inputs) for r in read)
        return outputs, (read if usable else None)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self._gated(*self.member_outputs(inputs, representations=self.gate_reads_representations))
        outputs = self.member_logits(inputs)
        merged = outputs[0].new_zeros(len(outputs[0]), len(self.classes))
        for index, (logits, weight) in enumerate(zip(outputs, self.teacher_weights)):
            merged.index_add_(1, getattr(self, f"positions_{index}"), weight * logits)
        return merged / self.coverage.to(merged.dtype)

    def calibrate(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """Fit a gate on labelled samples (``labels`` index :attr:`classes`): from then on the merge returns
        log p(c | x) = log sum_i P(S_i | x) p_i(c | x), with P(S_i | x) from the gate (see
        :mod:`distillery.teachers.merge_gate`). Returns the fitted gate's mean NLL on those samples."""
        with torch.no_grad():
            outputs, representations = self.member_outputs(inputs)
        log_probs = [torch.log_softmax(logits.float(), dim=-1) for logits in outputs]
        knows = torch.zeros(len(labels), len(outputs), dtype=torch.bool)
        label_log_probs = torch.zeros(len(labels), len(outputs))
        for index, own in enumerate(log_probs):
            lookup = torch.full((len(self.classes),), -1, dtype=torch.long)
            lookup[getattr(self, f"positions_{index}").cpu()] = torch.arange(own.shape[1])
            place = lookup[labels.cpu()]
            knows[:, index] = place >= 0
            label_log_probs[:, index] = own.cpu().gather(1, place.clamp_min(0)[:, None])[:, 0]
        features = teacher_features([p.cpu() for p in log_probs], [z.float().cpu() for z in outputs],
                                    [r.cpu() for r in representations] if representations is not None else None)
        gate = MergeGate(features.shape[1], len(outputs))
        nll = fit_gate(gate, features, knows, label_log_probs)
        self.gate = gate.to(outputs[0].device)
        self.gate_reads_representations = representations is not None
        return nll

    def _gated(self, outputs: list[torch.Tensor], representations: list[torch.Tensor] | None) -> torch.Tensor:
        log_probs = [torch.log_softmax(logits.float(), dim=-1) for logits in outputs]
        gate = self.gate(teacher_features(log_probs, [logits.float() for logits in outputs], representations))
        joint = log_probs[0].new_full((len(outputs[0]), len(outputs), len(self.classes)), float("-inf"))
        for index, own in enumerate(log_probs):
            joint[:, index, getattr(self, f"positions_{index}")] = gate[:, index:index + 1] + own
        return torch.logsumexp(joint, dim=1)  # log p(c | x): a valid set of logits


def _positions(own: list[str], classes: list[str], name: str) -> list[int]:
    for class_name in own:
        if class_name not in classes:
            raise ModelError(f"teacher {name} predicts {len(own)} classes but the data has {len(classes)}: its "
                             f"class {class_name!r} is not among the data's ({', '.join(classes)}); distil on data "
                             "that has that class, or leave this teacher out")
    if len(set(own)) != len(own):
        raise ModelError(f"teacher {name} names a class twice ({', '.join(own)}); class names must be unique")
    return [classes.index(class_name) for class_name in own]


def _check_covered(classes: list[str], coverage: torch.Tensor, own_classes: list[list[str]],
                   names: list[str]) -> None:
    uncovered = [name for name, weight in zip(classes, coverage.tolist()) if weight <= 0]
    if not uncovered:
        return
    known = {class_name for own in own_classes for class_name in own}
    who = (f"teacher {names[0]} predicts {len(own_classes[0])} classes" if len(names) == 1
           else f"teachers {', '.join(names)} predict {len(known)} classes together")
    missing = uncovered[0]
    why = ("only teachers of weight 0 predict it; give one a weight" if missing in known
           else "add a teacher that predicts it to distill.teacher, or leave it out of the student with data.classes")
    raise ModelError(f"{who} but the data has {len(classes)}: no teacher covers class {missing!r} "
                     f"(uncovered: {', '.join(uncovered)}); {why}")
