"""The command line: parse, call one API function, print. No logic lives here."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import List, Optional

import typer

from distillery.config import load_config
from distillery.demo import demo as run_demo
from distillery.errors import ConfigError, DistilleryError
from distillery.eval.report import write_report
from distillery.runs import build_teacher_cache, evaluate_checkpoint, run

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil a small student model from a large teacher, and measure what it bought.")

SET_HELP = "Override a config value, e.g. --set train.epochs=5 (repeatable)."


def user_errors(command):
    """A user's mistake becomes one line on stderr and exit code 2; Ctrl-C exits 130 quietly; bugs still raise."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DistilleryError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Checkpoints are written atomically, so the last finished epoch's last.safetensors is intact.
            typer.echo("interrupted; a run's last finished epoch is kept in its last.safetensors", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _run_config(config_path: Path, overrides: list[str], overwrite: bool, quiet: bool, *, distilling: bool) -> None:
    resolved = load_config(config_path, overrides + (["progress=false"] if quiet else []))
    if distilling and resolved.distill is None:
        raise ConfigError(f"{config_path} has no distill: section (teacher, method, temperature, alpha); "
                          "add one, or use `distillery train`")
    if not distilling and resolved.distill is not None:
        raise ConfigError(f"{config_path} has a distill: section; run `distillery distill {config_path}` instead")
    run_dir = run(resolved, overwrite=overwrite)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    typer.echo(f"{run_dir}: test accuracy {evaluation['accuracy']:.2%}, {evaluation['parameters']:,} parameters")
    for name, peer in evaluation.get("peers", {}).items():
        typer.echo(f"{run_dir / 'peers' / name}: test accuracy {peer['accuracy']:.2%}, {peer['parameters']:,} parameters")


OVERWRITE = typer.Option(False, help="Replace a finished run in output_dir.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
OVERRIDES = typer.Option([], "--set", help=SET_HELP)


@app.command()
@user_errors
def train(config: Path = typer.Argument(..., help="Run configuration (YAML)."),
          set_: List[str] = OVERRIDES, overwrite: bool = OVERWRITE, quiet: bool = QUIET) -> None:
    """Train a model on labels: a teacher, or a student from scratch."""
    _run_config(config, set_, overwrite, quiet, distilling=False)


@app.command()
@user_errors
def distill(config: Path = typer.Argument(..., help="Run configuration (YAML) with a distill: section."),
            set_: List[str] = OVERRIDES, overwrite: bool = OVERWRITE, quiet: bool = QUIET) -> None:
    """Distil a student from a teacher checkpoint, or train it with models that learn beside it (mutual, online)."""
    _run_config(config, set_, overwrite, quiet, distilling=True)


@app.command()
@user_errors
def cache(config: Path = typer.Argument(..., help="Run configuration (YAML) with a distill: section."),
          set_: List[str] = OVERRIDES,
          rebuild: bool = typer.Option(False, help="Recompute the teacher's outputs and replace the cache.")) -> None:
    """Compute the teacher's outputs on the config's transfer set once and cache them for later runs."""
    typer.echo(build_teacher_cache(load_config(config, set_), rebuild=rebuild))


@app.command()
@user_errors
def evaluate(checkpoint: Path = typer.Argument(..., help="A run directory or a .safetensors checkpoint."),
             teacher: Optional[Path] = typer.Option(None, help="A teacher checkpoint, to measure agreement."),
             dataset: Optional[str] = typer.Option(None, help="Evaluate on this dataset instead of the recorded one."),
             data_path: Optional[str] = typer.Option(None, help="Where that dataset's files are."),
             limit: Optional[int] = typer.Option(None, min=1, help="Use only this many test samples."),
             latency: bool = typer.Option(True, help="Measure CPU latency."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Accuracy, NLL, calibration, agreement, size and CPU latency of a checkpoint on its test set."""

    result = evaluate_checkpoint(checkpoint, teacher=teacher, dataset=dataset, data_path=data_path,
                                 test_limit=limit, latency=latency)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{checkpoint} on {result['samples']:,} test samples")
    typer.echo(f"  accuracy     {result['accuracy']:.2%}")
    typer.echo(f"  NLL          {result['nll']:.4f}")
    typer.echo(f"  ECE          {result['ece']:.4f}")
    if "agreement" in result:
        typer.echo(f"  agreement    {result['agreement']:.2%} with {teacher}")
    typer.echo(f"  parameters   {result['parameters']:,}")
    typer.echo(f"  size         {result['size_bytes'] / 1024:.1f} KiB")
    if "latency" in result:
        timing = result["latency"]
        typer.echo(f"  batch-1      {timing['batch1_median_ms']:.3f} ms median, {timing['batch1_p95_ms']:.3f} ms p95")
        typer.echo(f"  batch-256    {timing['batch256_samples_per_s']:,.0f} samples/s")


@app.command()
@user_errors
def report(run_dirs: List[Path] = typer.Argument(..., help="Run directories to compare."),
           output: Path = typer.Option(Path("report"), "--output", "-o", help="Where to write the report."),
           title: str = typer.Option("Distillation report", help="The report's title.")) -> None:
    """Write a Markdown + HTML report with plots comparing finished runs."""
    written = write_report(run_dirs, output, title=title)
    typer.echo(f"report written: {written['html']} and {written['markdown']}")


@app.command()
@user_errors
def demo(dataset: str = typer.Option("digits", help="digits (embedded, under 3 minutes) or fashion-mnist."),
         output_dir: Path = typer.Option(Path("demo-out"), help="Where the three runs and the report go."),
         overwrite: bool = typer.Option(False, help="Replace the runs of an earlier demo."),
         seed: int = typer.Option(0, help="Random seed."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")) -> None:
    """Teacher -> student from scratch -> distilled student on an embedded dataset, then the report."""

    result = run_demo(dataset, output_dir, overwrite=overwrite, seed=seed, progress=not quiet)
    typer.echo(result.table)
    typer.echo(f"\nreport: {result.report['html']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
