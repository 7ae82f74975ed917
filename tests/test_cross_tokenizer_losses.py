"""Cross-tokenizer losses against values computed by hand, and the character alignment on real tokenizers."""
from __future__ import annotations

import math

import pytest
import torch
from language_models import train_tokenizer

from distillery.data.tokenizer import load_tokenizer
from distillery.losses.cross_tokenizer import (Span, aligned_spans, gold_loss, shared_vocabulary, span_probabilities,
                                               uld_loss)


@pytest.mark.parametrize("student, teacher, spans", [
    # "Hello world": "Hello" | " world" against "Hel" "lo" | " world".
    ([(0, 5), (5, 11)], [(0, 3), (3, 5), (5, 11)], [Span(0, 1, 0, 2), Span(1, 2, 2, 3)]),
    # "Hi, you!": "Hi" "," | " you" "!" against "H" "i," | " " "you!": punctuation and spaces inside tokens.
    ([(0, 2), (2, 3), (3, 7), (7, 8)], [(0, 1), (1, 3), (3, 4), (4, 8)], [Span(0, 2, 0, 2), Span(2, 4, 2, 4)]),
    # "né!": a byte-level tokenizer cuts "é" into two pieces that both carry its offsets; they stay in one span.
    ([(0, 1), (1, 2), (1, 2), (2, 3)], [(0, 2), (2, 3)], [Span(0, 3, 0, 1), Span(3, 4, 1, 2)]),
    # A special token of no characters joins the span after it.
    ([(0, 0), (0, 2)], [(0, 2)], [Span(0, 2, 0, 1)]),
    # Text only the student covers is a last span with no teacher tokens.
    ([(0, 2), (2, 4)], [(0, 2)], [Span(0, 1, 0, 1), Span(1, 2, 1, 1)]),
])
def test_spans_cover_the_same_characters(student, teacher, spans):
    assert aligned_spans(student, teacher) == spans


def test_two_real_tokenizers_of_one_text_align_on_spaces_punctuation_and_characters_outside_ascii(tmp_path):
    text = "In the beginning, God created — «ça va?» Très bien: 東京 and Ελλάδα!  Two  spaces.\n"
    small = load_tokenizer(train_tokenizer(tmp_path / "small", vocabulary=280))
    large = load_tokenizer(train_tokenizer(tmp_path / "large", vocabulary=420))
    encode = lambda tokenizer: tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)  # noqa: E731
    first, second = encode(small), encode(large)
    assert first["input_ids"] != second["input_ids"], "the two tokenizers cut the text alike: nothing to align"
    spans = aligned_spans(first["offset_mapping"], second["offset_mapping"])
    # The spans partition both token sequences, in order ...
    assert [span.student_start for span in spans[1:]] == [span.student_end for span in spans[:-1]]
    assert [span.teacher_start for span in spans[1:]] == [span.teacher_end for span in spans[:-1]]
    assert spans[0][::2] == (0, 0) and (spans[-1].student_end, spans[-1].teacher_end) == (
        len(first["input_ids"]), len(second["input_ids"]))
    # ... and each span's tokens, decoded, are the same piece of text on both sides.
    for span in spans:
        ours = small.decode(first["input_ids"][span.student_start:span.student_end])
        theirs = large.decode(second["input_ids"][span.teacher_start:span.teacher_end])
        assert ours == theirs
    assert "".join(small.decode(first["input_ids"][s.student_start:s.student_end]) for s in spans) == text
    assert any(span.student_end - span.student_start > 1 for span in spans), "no span of several tokens"


def test_a_span_is_predicted_by_the_chain_rule():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
    tokens = torch.tensor([0, 1, 2])
    rows = span_probabilities(probs.log(), tokens, torch.tensor([0, 1, 2]), torch.tensor([3, 2, 3]))
    expected = torch.tensor([[0.5 * 0.8 * 0.5, 0.3 * 0.8 * 0.5, 0.2 * 0.8 * 0.5],   # tokens 0-2: p0 · p1(1) · p2(2)
                             [0.1, 0.8, 0.1],                                        # token 1 alone: p1
                             [0.25, 0.25, 0.5]])                                     # token 2 alone: p2
    torch.testing.assert_close(rows, expected)
    # The entry of the span's own first token is the probability of its whole text: 0.5 · 0.8 · 0.5.
    assert float(rows[0, 0]) == pytest.approx(0.2)


def test_uld_is_the_l1_distance_of_the_sorted_probabilities_by_hand():
    student = torch.tensor([[0.7, 0.2, 0.1]], requires_grad=True)
    teacher = torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    # sorted: [0.7, 0.2, 0.1, 0] against [0.6, 0.2, 0.1, 0.1]: 0.1 + 0 + 0 + 0.1.
    loss = uld_loss(student, teacher)
    assert float(loss.detach()) == pytest.approx(0.2)
    loss.sum().backward()
    assert student.grad.tolist() == [[1.0, 0.0, 0.0]]  # only the largest differs; ties give a zero subgradient
    same = torch.tensor([[0.2, 0.5, 0.3]])
    assert float(uld_loss(same, torch.tensor([[0.3, 0.2, 0.5]]))) == 0.0  # blind to which token is which


def test_gold_compares_shared_tokens_one_to_one_and_the_rest_by_uld_by_hand():
    student_ids, teacher_ids = shared_vocabulary({"a": 0, "b": 1, "c": 2}, {"b": 0, "a": 1, "d": 2, "e": 3})
    assert student_ids.tolist() == [0, 1] and teacher_ids.tolist() == [1, 0]
    student = torch.tensor([[0.5, 0.3, 0.2]])
    teacher = torch.tensor([[0.4, 0.4, 0.15, 0.05]])  # b 0.4, a 0.4, d 0.15, e 0.05
    # matched: |a 0.5 − 0.4| + |b 0.3 − 0.4| = 0.2; rest: [0.2, 0] against [0.15, 0.05] sorted: 0.05 + 0.05 = 0.1.
    assert float(gold_loss(student, teacher, student_ids, teacher_ids)) == pytest.approx(0.3)
    assert float(gold_loss(student, teacher, student_ids, teacher_ids, matched_weight=2.0, unmatched_weight=0.5)) \
        == pytest.approx(2.0 * 0.2 + 0.5 * 0.1)
    # ULD alone would not see that a and b are swapped between equal-sized entries.
    swapped = torch.tensor([[0.3, 0.5, 0.2]])
    assert float(uld_loss(swapped, torch.tensor([[0.3, 0.5, 0.2]]))) == 0.0
    assert float(gold_loss(swapped, torch.tensor([[0.3, 0.5, 0.2]]), torch.tensor([0, 1]), torch.tensor([1, 0]))) \
        == pytest.approx(0.4)


def test_equal_distributions_over_one_vocabulary_cost_nothing():
    probs = torch.softmax(torch.randn(4, 11, generator=torch.Generator().manual_seed(0)), dim=-1)
    ids = torch.arange(11)
    assert torch.all(uld_loss(probs, probs) == 0) and torch.all(gold_loss(probs, probs, ids, ids) == 0)
    assert math.isclose(float(uld_loss(probs[:1], torch.eye(11)[:1])), 2 * (1 - float(probs[0].max())), rel_tol=1e-5)
