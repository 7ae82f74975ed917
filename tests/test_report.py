"""The report: reading run directories, the comparison table, the written files."""

import json
import re
from pathlib import Path

import pytest

from distillery.errors import DistilleryError
from distillery.eval.report import comparison_table, write_report
from distillery.eval.run_record import RunRecord, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reliability(accuracy_shift: float) -> dict:
    edges = [round(0.1 * index, 1) for index in range(11)]
    counts = [0, 0, 0, 5, 12, 30, 60, 120, 400, 2000]
    centres = [edge + 0.05 for edge in edges[:-1]]
    return {
        "bin_edges": edges,
        "accuracy": [None if count == 0 else max(0.0, centre - accuracy_shift) for centre, count in zip(centres, counts)],
        "confidence": [None if count == 0 else centre for centre, count in zip(centres, counts)],
        "count": counts,
    }


def _write_run(root: Path, name: str, role: str, accuracy: float, parameters: int, latency_ms: float, **extra) -> Path:
    run_dir = root / name
    run_dir.mkdir()
    kd_part = role == "distilled"
    with open(run_dir / "metrics.jsonl", "w") as metrics_file:
        for epoch in (1, 2, 3):
            row = {"epoch": epoch, "lr": 0.001, "epoch_time_s": 1.5, "train/loss": 1.0 / epoch, "train/ce": 0.8 / epoch}
            if kd_part:
                row["train/kd"] = 0.2 / epoch
            row |= {"val/accuracy": accuracy - 0.03 + 0.01 * epoch, "val/loss": 0.5 / epoch}
            metrics_file.write(json.dumps(row) + "\n")
    config = {"method": {"name": "kd" if kd_part else "supervised"}, "train": {"epochs": 3}}
    if kd_part:
        config["method"] |= {"temperature": 4.0, "alpha": 0.9}
    (run_dir / "model.json").write_text(json.dumps({
        "format": "distillery-checkpoint", "version": 1, "role": role,
        "architecture": {"name": "cnn", "channels": [8, 16]}, "input_shape": [1, 28, 28], "num_classes": 10,
        "dataset": {"name": "fashion-mnist"}, "parameters": parameters, "epoch": 3, "config": config,
    }))
    evaluation = {
        "name": name, "role": role, "split": "test", "samples": 10000,
        "accuracy": accuracy, "nll": 0.25, "ece": 0.0123, "parameters": parameters, "size_bytes": parameters * 4,
        "latency": {"batch1_median_ms": latency_ms, "batch1_p95_ms": latency_ms * 1.5, "batch256_samples_per_s": 51234.4},
        "reliability": _reliability(0.02),
    } | extra
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    return run_dir


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    root = tmp_path / "runs"
    root.mkdir()
    return [
        _write_run(root, "teacher", "teacher", 0.93, 1_000_000, 2.0),
        _write_run(root, "scratch", "scratch", 0.88, 50_000, 0.5, agreement=0.9),
        _write_run(root, "distilled <kd>", "distilled", 0.90, 50_000, 0.5, agreement=0.95),
    ]


def test_write_report_produces_all_files(run_dirs, tmp_path):
    output_dir = tmp_path / "report"
    paths = write_report(run_dirs, output_dir, title="Fashion <KD>")
    assert set(paths) == {"markdown", "html", "learning_curves", "comparison", "reliability"}
    for key in ("learning_curves", "comparison", "reliability"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1024, key
    assert sorted(path.name for path in output_dir.iterdir()) == sorted(
        ["report.md", "report.html", "learning_curves.png", "comparison.png", "reliability.png", ".distillery-report"]
    )
    assert not list(output_dir.glob("*.tmp"))


def test_html_is_self_contained_and_escaped(run_dirs, tmp_path):
    page = write_report(run_dirs, tmp_path / "report", title="Fashion <KD>")["html"].read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "href=" not in page and "<link" not in page and ".png" not in page
    assert "Fashion &lt;KD&gt;" in page and "distilled &lt;kd&gt;" in page and "<kd>" not in page
    assert "<td>90.00%</td>" in page
    assert "<dt>temperature</dt><dd>4.0</dd>" in page


def test_markdown_references_images_and_run_sections(run_dirs, tmp_path):
    text = write_report(run_dirs, tmp_path / "report")["markdown"].read_text()
    assert text.startswith("# Distillation report")
    for name in ("learning_curves.png", "comparison.png", "reliability.png"):
        assert f"({name})" in text
    assert "### teacher" in text and "**alpha**: 0.9" in text and "cnn (channels=[8, 16])" in text


def test_table_has_one_row_per_run_with_formatted_numbers(run_dirs):
    runs = [load_run(run_dir) for run_dir in run_dirs]
    table = comparison_table(runs)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3
    teacher_cells = [cell.strip() for cell in rows[1].strip("|").split("|")]
    assert teacher_cells == [
        "teacher", "teacher", "93.00%", "0.250", "0.012", "–", "1,000,000", "3.8 MiB",
        "2.000 / 3.000 ms", "51,234 samples/s",
    ]
    assert "88.00%" in rows[2] and "195.3 KiB" in rows[2] and "95.00%" in rows[3]


def test_summary_lines_compare_against_teacher_and_scratch(run_dirs):
    table = comparison_table([load_run(run_dir) for run_dir in run_dirs])
    assert "scratch: student is 20.0× smaller and 4.0× faster at batch 1 than the teacher" in table
    assert (
        "distilled &lt;kd&gt;: distillation changed test accuracy by +2.00 points (+200 of 10,000 test images; 95% "
        "interval +1.1 to +2.9): better beyond noise, against the student trained from scratch (closing 40% of the "
        "teacher–scratch gap)"
    ) in table


def test_a_text_classifiers_difference_is_counted_in_test_texts(run_dirs):
    runs = [load_run(run_dir) for run_dir in run_dirs]
    for run in runs:
        run.evaluation["task"] = "text_classification"
    assert "(+200 of 10,000 test texts; 95% interval" in comparison_table(runs)


def test_accuracy_formatting_keeps_two_decimals(tmp_path):
    run = RunRecord(run_dir=tmp_path, name="solo", role="scratch", evaluation={"accuracy": 0.9123})
    table = comparison_table([run])
    assert "91.23%" in table and "student is" not in table and "distillation changed" not in table


def test_missing_evaluation_names_the_file(run_dirs):
    (run_dirs[1] / "evaluation.json").unlink()
    with pytest.raises(DistilleryError, match=r"scratch is not a finished distillery run: evaluation\.json is missing"):
        load_run(run_dirs[1])


def test_invalid_json_names_file_and_line(run_dirs):
    with open(run_dirs[0] / "metrics.jsonl", "a") as metrics_file:
        metrics_file.write("{not json\n")
    with pytest.raises(DistilleryError, match=r"metrics\.jsonl line 4"):
        load_run(run_dirs[0])


def test_zero_runs_is_an_error(tmp_path):
    with pytest.raises(DistilleryError, match="no run directories"):
        write_report([], tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_name_falls_back_to_directory_name(run_dirs):
    evaluation_path = run_dirs[0] / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text())
    del evaluation["name"]
    evaluation_path.write_text(json.dumps(evaluation))
    assert load_run(run_dirs[0]).name == "teacher"


def test_sparse_run_renders_with_dashes(tmp_path):
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "evaluation.json").write_text(json.dumps({"accuracy": 0.5, "role": "scratch"}))
    (run_dir / "model.json").write_text("{}")
    paths = write_report([run_dir], tmp_path / "report")
    row = comparison_table([load_run(run_dir)]).splitlines()[2]
    assert row == "| bare | scratch | 50.00% | – | – | – | – | – | – | – |"
    assert all(paths[key].read_bytes().startswith(PNG_MAGIC) for key in ("learning_curves", "comparison", "reliability"))


def test_a_loss_is_worded_as_widening_the_gap():
    from distillery.eval.report import comparison_table
    from distillery.eval.run_record import RunRecord

    def record(name, role, accuracy):
        return RunRecord(run_dir=Path(name), name=name, role=role, history=[], evaluation={"accuracy": accuracy},
                         metadata={})

    table = comparison_table([record("t", "teacher", 0.95), record("s", "scratch", 0.90), record("d", "distilled", 0.89)])
    assert "by -1.00 points" in table and "widening the teacher–scratch gap by 20%" in table
    assert "closing" not in table


# ---------------------------------------------------------------- trustworthy speed claims


def _set_latency(run_dir: Path, **fields) -> None:
    path = run_dir / "evaluation.json"
    evaluation = json.loads(path.read_text())
    evaluation["latency"] |= fields
    path.write_text(json.dumps(evaluation))


def test_an_unstable_latency_makes_no_speed_claim(run_dirs, tmp_path):
    reason = "batch-1 round medians range 0.039-0.16 ms, more than 25% apart"
    _set_latency(run_dirs[0], stable=False, instability=reason)  # the teacher, which every ratio divides
    runs = [load_run(run_dir) for run_dir in run_dirs]
    table = comparison_table(runs)
    assert "faster" not in table and "slower" not in table
    assert f"scratch: student is 20.0× smaller than the teacher; speed not compared: the latency measurement of " \
           f"teacher was unstable ({reason})" in table
    assert "| 2.000 / 3.000 ms (unstable) | 51,234 samples/s (unstable) |" in table
    page = write_report(run_dirs, tmp_path / "report")["html"].read_text()
    assert "faster" not in page and "speed not compared" in page and "2.000 / 3.000 ms (unstable)" in page


def test_latencies_measured_under_different_conditions_are_not_compared(run_dirs):
    _set_latency(run_dirs[0], threads=16, cpu="big server", torch_version="2.5.1", stable=True, instability=None)
    _set_latency(run_dirs[1], threads=1, cpu="big server", torch_version="2.5.1", stable=True, instability=None)
    table = comparison_table([load_run(run_dir) for run_dir in run_dirs[:2]])
    assert "faster" not in table and "speed not compared: latencies measured under different conditions " \
                                       "(threads 16 vs 1)" in table
    _set_latency(run_dirs[1], threads=16)
    assert "4.0× faster at batch 1" in comparison_table([load_run(run_dir) for run_dir in run_dirs[:2]])


def _capture_figures(monkeypatch) -> list:
    from distillery.eval import plots

    captured, save = [], plots.save_figure

    def capture(fig, path):
        captured.append(fig)
        fig.draw_without_rendering()
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", capture)
    return captured


def test_latency_axis_never_starts_below_zero(tmp_path, monkeypatch):
    from distillery.eval.plots import plot_comparison

    figures = _capture_figures(monkeypatch)
    # Margins around 0.01 ms and 5 ms would otherwise reach about -1.2 ms.
    runs = [RunRecord(tmp_path, name, "scratch", evaluation={"accuracy": 0.9, "parameters": 10,
                                                              "latency": {"batch1_median_ms": latency}})
            for name, latency in (("fast", 0.01), ("slow", 5.0))]
    plot_comparison(runs, tmp_path / "comparison.png")
    left, right = figures[0].axes[1].get_xlim()
    assert left == 0.0 and right > 5.0


def test_reliability_bars_show_how_many_samples_they_hold(run_dirs, tmp_path, monkeypatch):
    from distillery.eval.plots import plot_reliability

    figures = _capture_figures(monkeypatch)
    plot_reliability([load_run(run_dirs[0])], tmp_path / "reliability.png")
    ax = figures[0].axes[0]
    # The fixture's non-empty bins hold 5, 12, 30, 60, 120, 400 and 2000 samples, in that order.
    assert [text.get_text() for text in ax.texts] == ["5", "12", "30", "60", "120", "400", "2,000"]
    alphas = [patch.get_alpha() for patch in ax.patches]
    assert len(alphas) == 7 and alphas == sorted(alphas) and alphas[0] < 0.25 < 0.8 < alphas[-1]


# ---------------------------------------------------------------- per-class results

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _add_per_class(run_dir: Path, omitted_accuracy: int, class_names=CLASS_NAMES) -> None:
    """100 test images per class, 90 right; class 3 ("Dress") gets ``omitted_accuracy`` right."""
    size = len(class_names)
    matrix = [[0] * size for _ in range(size)]
    for true in range(size):
        right = omitted_accuracy if true == 3 else 90
        matrix[true][true], matrix[true][(true + 1) % size] = right, 100 - right
    path = run_dir / "evaluation.json"
    evaluation = json.loads(path.read_text())
    evaluation |= {"per_class": {"accuracy": [row[index] / 100 for index, row in enumerate(matrix)],
                                 "samples": [100] * size}, "confusion_matrix": matrix}
    path.write_text(json.dumps(evaluation))
    metadata = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps(metadata | {"class_names": class_names}))


def test_per_class_table_and_confusion_plot_read_an_omitted_class_experiment(run_dirs, tmp_path):
    for run_dir, omitted in zip(run_dirs, (95, 90, 42)):  # the distilled student never saw a Dress
        _add_per_class(run_dir, omitted)
    paths = write_report(run_dirs, tmp_path / "report")
    assert paths["confusion"].read_bytes().startswith(PNG_MAGIC) and len(paths["confusion"].read_bytes()) > 1024
    text = paths["markdown"].read_text()
    assert "## Per-class test accuracy" in text and "(confusion.png)" in text
    assert "| class | teacher | scratch | distilled &lt;kd&gt; | test samples |" in text
    assert "| Dress | 95.00% | 90.00% | 42.00% | 100 |" in text
    assert "| T-shirt/top | 90.00% | 90.00% | 90.00% | 100 |" in text
    page = paths["html"].read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    assert "<h2>Per-class test accuracy</h2>" in page
    assert "<tr><td>Dress</td><td>95.00%</td><td>90.00%</td><td>42.00%</td><td>100</td></tr>" in page


def test_runs_over_other_classes_and_old_runs_share_the_per_class_table(run_dirs, tmp_path):
    _add_per_class(run_dirs[0], 95)
    _add_per_class(run_dirs[2], 42, class_names=["Dress", "Coat", "Bag", "Shirt"])  # trained on four classes
    # run_dirs[1] is an old evaluation.json without per-class results.
    text = write_report(run_dirs, tmp_path / "report")["markdown"].read_text()
    assert "| Dress | 95.00% | – | 90.00% | 100 |" in text  # index 0 of the four-class run
    assert "| Shirt | 90.00% | – | 42.00% | 100 |" in text  # index 3 of the four-class run
    assert "| Trouser | 90.00% | – | – | 100 |" in text


def test_old_evaluation_files_give_the_report_they_always_did(run_dirs, tmp_path):
    paths = write_report(run_dirs, tmp_path / "report")
    assert "confusion" not in paths and not (tmp_path / "report" / "confusion.png").exists()
    text = paths["markdown"].read_text()
    assert "Per-class" not in text and "scratch: student is 20.0× smaller and 4.0× faster at batch 1" in text


def test_class_indices_stand_in_for_missing_or_mismatched_class_names(run_dirs, tmp_path):
    _add_per_class(run_dirs[2], 42, class_names=[str(index) for index in range(10)])
    metadata = json.loads((run_dirs[2] / "model.json").read_text())
    (run_dirs[2] / "model.json").write_text(json.dumps(metadata | {"class_names": ["only", "two"]}))
    evaluation = json.loads((run_dirs[0] / "evaluation.json").read_text())
    (run_dirs[0] / "evaluation.json").write_text(json.dumps(evaluation | {"confusion_matrix": [[1, 2], [3]]}))
    paths = write_report(run_dirs, tmp_path / "report")  # the malformed matrix is skipped, not drawn
    assert "| 3 | – | – | 42.00% | 100 |" in paths["markdown"].read_text()
    assert paths["confusion"].read_bytes().startswith(PNG_MAGIC)
