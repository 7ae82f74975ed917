"""Metrics against hand-computed values, predict's mode handling, and latency measurement."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery.errors import ConfigError, DataError
from distillery.eval.latency import measure_latency
from distillery.eval.metrics import (
    accuracy,
    agreement,
    eval_mode,
    expected_calibration_error,
    negative_log_likelihood,
    predict,
    reliability_bins,
)

# Four samples with known softmax probabilities (logits = log-probabilities).
# Two fall in the confidence bin [0, 0.5], two in (0.5, 1]; each bin has one right, one wrong.
HAND_PROBABILITIES = torch.tensor(
    [
        [0.40, 0.30, 0.30],  # confidence 0.40, predicts 0, label 0: right
        [0.30, 0.45, 0.25],  # confidence 0.45, predicts 1, label 2: wrong
        [0.90, 0.05, 0.05],  # confidence 0.90, predicts 0, label 0: right
        [0.80, 0.10, 0.10],  # confidence 0.80, predicts 0, label 1: wrong
    ]
)
HAND_LOGITS = HAND_PROBABILITIES.log()
HAND_LABELS = torch.tensor([0, 2, 0, 1])


def test_accuracy_and_agreement_by_hand():
    assert accuracy(HAND_LOGITS, HAND_LABELS) == pytest.approx(0.5)
    reference = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
    # argmax: ours 0, 1, 0, 0; reference 0, 2, 0, 1 -> two of four agree
    assert agreement(HAND_LOGITS, reference) == pytest.approx(0.5)
    assert agreement(HAND_LOGITS, HAND_LOGITS * 3) == 1.0


def test_expected_calibration_error_by_hand():
    # low bin: 2/4 * |1/2 - (0.40 + 0.45)/2| = 0.5 * 0.075 = 0.0375
    # high bin: 2/4 * |1/2 - (0.90 + 0.80)/2| = 0.5 * 0.35 = 0.175
    expected = 0.0375 + 0.175
    assert expected_calibration_error(HAND_LOGITS, HAND_LABELS, bins=2) == pytest.approx(expected)


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Confidence 0.8 on class 0, and class 0 is right for 8 of the 10 samples.
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]]).repeat(10, 1)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-6)


def test_reliability_bins_by_hand():
    result = reliability_bins(HAND_LOGITS, HAND_LABELS, bins=2)
    assert result["bin_edges"] == pytest.approx([0.0, 0.5, 1.0])
    assert result["count"] == [2, 2]
    assert result["accuracy"] == pytest.approx([0.5, 0.5])
    assert result["confidence"] == pytest.approx([0.425, 0.85])


def test_reliability_bins_counts_sum_to_n_and_empty_bins_are_none():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1))
    result = reliability_bins(logits, labels, bins=15)
    assert len(result["bin_edges"]) == 16
    assert sum(result["count"]) == 50
    # confidence >= 1/4, so the bins below 0.25 are empty
    assert result["count"][0] == 0 and result["accuracy"][0] is None and result["confidence"][0] is None
    weighted = sum(
        count / 50 * abs(acc - conf)
        for count, acc, conf in zip(result["count"], result["accuracy"], result["confidence"])
        if count
    )
    assert expected_calibration_error(logits, labels) == pytest.approx(weighted)


def test_negative_log_likelihood_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([1, 0])
    first = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.0)))
    second = -(0.0 - math.log(2.0 + math.exp(3.0)))
    assert negative_log_likelihood(logits, labels) == pytest.approx((first + second) / 2)
    assert negative_log_likelihood(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item())


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="3"):
        accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        agreement(torch.zeros(3, 2), torch.zeros(3, 4))


class Frozen(nn.Module):
    """A model holding a frozen part that must stay in eval mode while the rest trains."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
        self.frozen = nn.BatchNorm1d(4).eval()

    def forward(self, inputs):
        return self.body(self.frozen(inputs))


def test_predict_runs_in_eval_mode_and_restores_each_submodule():
    model = Frozen()
    model.train()
    model.frozen.eval()
    inputs = torch.randn(10, 4)
    labels = torch.arange(10) % 3
    batches = [(inputs[:6], labels[:6], torch.arange(6)), (inputs[6:], labels[6:])]
    logits, got_labels = predict(model, batches)
    assert model.training and model.body.training and not model.frozen.training
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert torch.equal(got_labels, labels)
    with torch.no_grad(), eval_mode(model):
        expected = model(inputs)  # deterministic only because dropout is off
    assert torch.allclose(logits, expected)


def test_predict_restores_eval_mode_and_rejects_empty_data():
    model = nn.Linear(4, 2).eval()
    predict(model, [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))])
    assert not model.training
    with pytest.raises(DataError):
        predict(model, [])


def test_measure_latency_is_positive_cheap_and_restores_state():
    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.1), nn.Linear(32, 4)).train()
    threads_before = torch.get_num_threads()
    result = measure_latency(
        model, (16,), batch1_repeats=30, throughput_batch=32, throughput_repeats=3, warmup=2, threads=1
    )
    assert result["batch1_median_ms"] > 0
    assert result["batch1_p95_ms"] >= result["batch1_median_ms"]
    assert result["batch256_samples_per_s"] > 0
    assert result["threads"] == 1 and result["throughput_batch"] == 32
    assert torch.get_num_threads() == threads_before
    assert model.training


def test_measure_latency_defaults_run_a_small_mlp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    result = measure_latency(model, (1, 8, 8))
    assert result["batch1_p95_ms"] >= result["batch1_median_ms"] > 0
    assert not model.training


def test_measure_latency_rejects_bad_counts():
    with pytest.raises(ConfigError, match="batch1_repeats"):
        measure_latency(nn.Linear(2, 2), (2,), batch1_repeats=0)
