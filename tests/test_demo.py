"""`distillery demo` on the embedded digits data: three runs, the table, the report."""
import json

from typer.testing import CliRunner

from distillery.cli import app


def test_demo_prints_the_three_way_table_and_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--output-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["model", "teacher", "scratch", "distilled"]
    for name in ("teacher", "scratch", "distilled"):
        evaluation = json.loads((tmp_path / name / "evaluation.json").read_text())
        assert evaluation["samples"] == 360
    accuracy = {name: json.loads((tmp_path / name / "evaluation.json").read_text())["accuracy"]
                for name in ("teacher", "scratch", "distilled")}
    # Few labels: the soft targets pay beyond noise (the demo's own verdict says so).
    assert accuracy["teacher"] > accuracy["distilled"] > accuracy["scratch"] + 0.05
    assert "better beyond noise" in result.stdout and "Setting: both students see the labels" in result.stdout
    student = json.loads((tmp_path / "distilled" / "model.json").read_text())
    assert student["config"]["transfer"]["labeled_fraction"] == 0.05
    report = tmp_path / "report"
    for name in ("report.html", "report.md", "learning_curves.png", "comparison.png", "reliability.png"):
        assert (report / name).stat().st_size > 1000
    assert "distillation changed test accuracy" in result.stdout
