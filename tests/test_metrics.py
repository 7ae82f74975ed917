"""Metrics against hand-computed values, predict's mode handling, and latency measurement."""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distillery
from distillery.data import ArrayDataset
from distillery.errors import ConfigError, DataError
from distillery.eval import latency as latency_module
from distillery.eval.latency import assess_stability, environment_difference, measure_latency, time_inference
from distillery.eval.metrics import (
    accuracy,
    agreement,
    confusion_matrix,
    eval_mode,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_results,
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


# ---------------------------------------------------------------- per-class results


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    # HAND_LOGITS predict 0, 1, 0, 0 for labels 0, 2, 0, 1.
    assert confusion_matrix(HAND_LOGITS, HAND_LABELS) == [[2, 0, 0], [1, 0, 0], [0, 1, 0]]
    results = per_class_results(HAND_LOGITS, HAND_LABELS)
    assert results["per_class"] == {"accuracy": [1.0, 0.0, 0.0], "samples": [2, 1, 1]}
    assert results["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_a_class_without_test_samples_has_no_accuracy_and_bad_labels_are_refused():
    # Like a transfer set without class 2: it still has a row and a column, with no accuracy.
    results = per_class_results(torch.tensor([[3.0, 0.0, 1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 0]))
    assert results["per_class"] == {"accuracy": [0.5, None, None], "samples": [2, 0, 0]}
    assert results["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_many_classes_get_per_class_accuracy_but_no_confusion_matrix():
    # 300 x 300 counts would swamp evaluation.json; the accuracy per class still says which classes fail.
    logits, labels = torch.eye(300)[:10], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 299])
    results = per_class_results(logits, labels)
    assert "confusion_matrix" not in results and len(results["per_class"]["accuracy"]) == 300
    assert results["per_class"]["accuracy"][:3] == [1.0, 1.0, 1.0] and results["per_class"]["accuracy"][299] == 0.0
    assert results["per_class"]["accuracy"][100] is None and sum(results["per_class"]["samples"]) == 10


def test_evaluate_returns_per_class_results_consistent_with_accuracy():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(60, 5, generator=generator)
    data = ArrayDataset(inputs, (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long(), ["low", "mid", "high"], "toy")
    metrics = distillery.evaluate(nn.Linear(5, 3), data)
    matrix, per_class = metrics["confusion_matrix"], metrics["per_class"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert sum(map(sum, matrix)) == metrics["samples"] == 60
    labels = data.labels
    assert per_class["samples"] == [int((labels == c).sum()) for c in range(3)]
    assert per_class["accuracy"] == pytest.approx([matrix[c][c] / per_class["samples"][c] for c in range(3)])
    assert sum(matrix[c][c] for c in range(3)) / 60 == pytest.approx(metrics["accuracy"])


# ---------------------------------------------------------------- trustworthy latency


def test_latency_records_where_it_was_measured_and_its_rounds():
    result = measure_latency(nn.Linear(8, 2), (8,), batch1_repeats=20, throughput_batch=8, throughput_repeats=5,
                             warmup=1, threads=1)
    assert result["threads"] == 1 and result["torch_version"] == torch.__version__
    assert isinstance(result["cpu"], str) and result["cpu"]
    assert len(result["batch1_round_medians_ms"]) == 5 and len(result["throughput_round_samples_per_s"]) == 5
    assert isinstance(result["stable"], bool) and (result["instability"] is None) == result["stable"]


def test_cpu_model_falls_back_when_proc_cpuinfo_is_unreadable(monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(latency_module, "open", unreadable, raising=False)
    monkeypatch.setattr(latency_module.platform, "processor", lambda: "")
    monkeypatch.setattr(latency_module.platform, "machine", lambda: "arm64")
    assert latency_module.cpu_model.__wrapped__() == "arm64"
    monkeypatch.setattr(latency_module.platform, "machine", lambda: "")
    assert latency_module.cpu_model.__wrapped__() == "unknown"


def test_stability_rule_by_hand():
    steady = [1.0] * 200
    assert assess_stability(steady, [0.01] * 10) is None
    # Rounds of 40 calls: medians 1.0 and 1.2 are within 25%; 1.0 and 1.3 are not.
    assert assess_stability([1.0] * 120 + [1.2] * 80, [0.01] * 10) is None
    assert "batch-1 round medians range 1-1.3 ms" in assess_stability([1.0] * 120 + [1.3] * 80, [0.01] * 10)
    # A busy second half of the large batches.
    assert "large-batch round medians" in assess_stability(steady, [0.01] * 5 + [0.05] * 5)
    # Stalls spread evenly (every round alike) but in more than 1 call in 20: p95 is 10x the median.
    stalled = [10.0 if index % 13 == 0 else 1.0 for index in range(200)]
    assert "p95 10 ms is 10.0x its median 1 ms" in assess_stability(stalled, [0.01] * 10)
    assert assess_stability([1.0], [0.01]) is None  # one call: nothing to judge by


def test_a_measurement_that_slows_down_midway_is_flagged_unstable():
    calls = []

    def slows_down(_inputs):
        calls.append(None)
        time.sleep(0.001 if len(calls) <= 20 else 0.004)

    timings = time_inference(slows_down, (2,), batch1_repeats=40, throughput_repeats=2, warmup=0)
    assert timings["stable"] is False and "batch-1 round medians" in timings["instability"]
    steady = time_inference(lambda _inputs: time.sleep(0.003), (2,), batch1_repeats=40, throughput_repeats=2, warmup=0)
    assert steady["stable"] is True and steady["instability"] is None


def test_environment_difference_names_what_differs():
    assert environment_difference({"threads": 4, "cpu": "A"}, {"threads": 1, "cpu": "A"}) == "threads 4 vs 1"
    assert environment_difference({"threads": 4}, {"cpu": "A"}) is None  # nothing recorded by both
    assert environment_difference(None, {"threads": 1}) is None
