"""The command line: parse, call one API function, print. No logic lives here."""
from __future__ import annotations

import functools
import json
import traceback
from importlib.metadata import version as package_version
from pathlib import Path
from typing import List, Optional

import typer

from distillery.defaults import EXPORT_TOLERANCE, TUNE_MAX_POINTS
from distillery.errors import ConfigError, DistilleryError, TrainingInterrupted
from distillery.messages import set_verbosity

# Each command imports what it calls when it runs: torch, matplotlib, onnx and transformers take seconds to
# import, and `distillery --help`, `--version` and a mistyped option should answer at once.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil a small student model from a large teacher, and measure what it bought.")

SET_HELP = "Override a config value, e.g. --set train.epochs=5 (repeatable)."


# --debug: a user error also shows the traceback of what caused it (a user factory's exception, say).
DEBUG = {"on": False}


def _is_main_process() -> bool:
    from distillery.engine.distributed import is_main_process

    return is_main_process()


def user_errors(command):
    """A user's mistake becomes one line on stderr and exit code 2; Ctrl-C exits 130 quietly; bugs still raise."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TrainingInterrupted as error:
            if _is_main_process():  # under torchrun every process stops with this; rank 0 says it once
                typer.echo(str(error), err=True)  # not a mistake: the state is saved and the message says how to go on
            raise typer.Exit(error.exit_code) from None
        except DistilleryError as error:
            if DEBUG["on"]:
                traceback.print_exception(error)
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Checkpoints are written atomically, so the last finished epoch's last.safetensors is intact.
            typer.echo("interrupted; a run's last finished epoch is kept in its last.safetensors", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _resolved_config(config_path: Optional[Path], overrides: list[str], overwrite: bool, quiet: bool,
                     resume: Optional[Path]):
    from distillery.app.config.files import load_config
    from distillery.app.steps.resume import resume_config

    quiet_override = ["progress=false"] if quiet else []
    if resume is None:
        if config_path is None:
            raise ConfigError("give a run configuration (YAML), or --resume RUN_DIR to continue an interrupted run")
        return load_config(config_path, overrides + quiet_override)
    if config_path is not None or overrides or overwrite:
        raise ConfigError(f"--resume {resume} continues the run with its own config.yaml; "
                          "drop the config file, --set and --overwrite")
    return resume_config(resume, quiet_override)


def _run_config(config_path: Optional[Path], overrides: list[str], overwrite: bool, quiet: bool, *, distilling: bool,
                resume: Optional[Path] = None) -> None:
    set_verbosity(quiet=quiet, debug=DEBUG["on"])
    resolved = _resolved_config(config_path, overrides, overwrite, quiet, resume)
    config_path = config_path or resume / "config.yaml"
    if distilling and resolved.distill is None:
        raise ConfigError(f"{config_path} has no distill: section (teacher, method, temperature, alpha); "
                          "add one, or use `distillery train`")
    if not distilling and resolved.distill is not None:
        raise ConfigError(f"{config_path} has a distill: section; run `distillery distill {config_path}` instead")
    from distillery.app.workflows.run import run

    run_dir = run(resolved, overwrite=overwrite, resume=resume is not None)
    if not _is_main_process():
        return  # under torchrun rank 0 reports for all
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    typer.echo(result_line(run_dir, evaluation))
    for name, peer in evaluation.get("peers", {}).items():
        typer.echo(result_line(run_dir / "peers" / name, peer))


def result_line(run_dir: Path, evaluation: dict) -> str:
    """What a finished run says: test perplexity for a language model (the teacher's beside it), else accuracy."""
    parameters = f"{evaluation['parameters']:,} parameters" if "parameters" in evaluation else None
    metric, shown = ("perplexity", "{:.2f}") if "perplexity" in evaluation else ("accuracy", "{:.2%}")
    teacher = evaluation.get("teacher") if isinstance(evaluation.get("teacher"), dict) else {}
    against = f" (teacher {shown.format(teacher[metric])})" if metric in teacher else ""
    measured = f"test {metric} {shown.format(evaluation[metric])}{against}"
    return ", ".join(filter(None, [f"{run_dir}: {measured}", parameters]))


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"distillery {package_version('distillery')}")
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                         help="Print the version and exit."),
            debug: bool = typer.Option(False, "--debug", help="With an error, also print its traceback.")) -> None:
    """Distil a small student model from a large teacher, and measure what it bought."""
    DEBUG["on"] = debug
    set_verbosity(debug=debug)


OVERWRITE = typer.Option(False, help="Replace a finished run in output_dir.")
ALLOW_FACTORY = typer.Option([], "--allow-factory", help="A package.module:function factory the checkpoints may name "
                             "as their architecture (repeatable); only built-in ones otherwise.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars and no notes; errors and warnings still print.")
OVERRIDES = typer.Option([], "--set", help=SET_HELP)
RESUME = typer.Option(None, "--resume", help="Continue the interrupted run in this directory from its saved state.")


@app.command()
@user_errors
def train(config: Optional[Path] = typer.Argument(None, help="Run configuration (YAML); left out only with --resume."),
          set_: List[str] = OVERRIDES, overwrite: bool = OVERWRITE, quiet: bool = QUIET,
          resume: Optional[Path] = RESUME) -> None:
    """Train a model on labels: a teacher, or a student from scratch."""
    _run_config(config, set_, overwrite, quiet, distilling=False, resume=resume)


@app.command()
@user_errors
def distill(config: Optional[Path] = typer.Argument(None, help="Run configuration (YAML) with a distill: section; "
                                                    "left out only with --resume."),
            set_: List[str] = OVERRIDES, overwrite: bool = OVERWRITE, quiet: bool = QUIET,
            resume: Optional[Path] = RESUME) -> None:
    """Distil a student from a teacher checkpoint, or train it with models that learn beside it (mutual, online)."""
    _run_config(config, set_, overwrite, quiet, distilling=True, resume=resume)


@app.command()
@user_errors
def cache(config: Path = typer.Argument(..., help="Run configuration (YAML) with a distill: section."),
          set_: List[str] = OVERRIDES,
          rebuild: bool = typer.Option(False, help="Recompute the teacher's outputs and replace the cache.")) -> None:
    """Compute the teacher's outputs on the config's transfer set once and cache them for later runs (language
    models: its top-k or sampled targets and test scores, built by every process under torchrun)."""
    from distillery.app.config.files import load_config
    from distillery.app.config.sections import TEXT_DATASETS
    from distillery.app.steps.transfer_batches import build_teacher_cache
    from distillery.app.workflows.cache_targets import cache_language_targets

    run_config = load_config(config, set_)
    build = cache_language_targets if run_config.data.dataset in TEXT_DATASETS else build_teacher_cache
    line = build(run_config, rebuild=rebuild)
    if _is_main_process():
        typer.echo(line)


@app.command("tune")
@user_errors
def tune_command(
        config: Path = typer.Argument(..., help="Run configuration (YAML) with a distill: section."),
        grid: List[str] = typer.Option([], "--grid", help="Values to try for a config key, e.g. --grid "
                                       "distill.temperature=1,2,4 (repeatable: every combination is tried)."),
        epochs: Optional[int] = typer.Option(None, min=1, help="Epochs of each grid run (default: the config's)."),
        output_dir: Optional[Path] = typer.Option(None, help="Where the runs and the tune's files go "
                                                  "(default: the config's output_dir + '-tune')."),
        final: bool = typer.Option(False, help="Then train the best config at the config's epochs into OUTPUT_DIR/final."),
        overwrite: bool = typer.Option(False, help="Train every point again; replace another tune in OUTPUT_DIR."),
        max_points: int = typer.Option(TUNE_MAX_POINTS, min=1, help="Refuse a grid of more points than this."),
        set_: List[str] = OVERRIDES, quiet: bool = QUIET) -> None:
    """Distil once per grid point, and once from scratch; choose the settings by validation accuracy.

    Without --grid: distill.temperature=1,2,4 x distill.alpha=0.1,0.5,0.9 (methods with both).
    Writes tune.json, tune.md, best.yaml and, for a grid of two keys, the tune.png heat map.
    """
    from distillery.app.config.files import load_config
    from distillery.app.workflows.tune import parse_grid, tune

    set_verbosity(quiet=quiet, debug=DEBUG["on"])
    resolved = load_config(config, set_ + (["progress=false"] if quiet else []))
    result = tune(resolved, parse_grid(grid) if grid else None, epochs=epochs, output_dir=output_dir,
                  final=final, overwrite=overwrite, max_points=max_points)
    typer.echo(result.summary)
    typer.echo(f"table: {result.output_dir / 'tune.md'}; best config: {result.output_dir / 'best.yaml'}")
    if result.final_run is not None:
        evaluation = json.loads((result.final_run / "evaluation.json").read_text())
        typer.echo(f"{result.final_run}: test accuracy {evaluation['accuracy']:.2%} (trained at the config's epochs)")


@app.command()
@user_errors
def evaluate(checkpoint: Path = typer.Argument(..., help="A run directory or a .safetensors checkpoint."),
             teacher: Optional[Path] = typer.Option(None, help="A teacher checkpoint, to measure agreement."),
             dataset: Optional[str] = typer.Option(None, help="Evaluate on this dataset instead of the recorded one."),
             data_path: Optional[str] = typer.Option(None, help="Where that dataset's files are."),
             limit: Optional[int] = typer.Option(None, min=1, help="Use only this many test samples."),
             latency: bool = typer.Option(True, help="Measure CPU latency."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON."),
             allow_factory: List[str] = ALLOW_FACTORY) -> None:
    """Accuracy, NLL, calibration, agreement, size and CPU latency of a checkpoint on its test set."""
    from distillery.app.steps.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, teacher=teacher, dataset=dataset, data_path=data_path,
                                 test_limit=limit, latency=latency, allow_factories=allow_factory)
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
        if not timing.get("stable", True):
            typer.echo(f"  latency is unstable on this machine now ({timing.get('instability', 'rounds disagree')}); "
                       "measure again on a quiet machine before comparing")


@app.command()
@user_errors
def generate(run_dir: Path = typer.Argument(..., help="A finished language-model run directory."),
             prompt: Optional[str] = typer.Option(None, help="The text to continue."),
             chat: Optional[str] = typer.Option(None, help="A question, rendered with the run's chat template as "
                                                           "the user's turn; each model answers it."),
             max_new_tokens: int = typer.Option(40, min=1, help="How many tokens to add."),
             temperature: float = typer.Option(0.0, min=0.0, help="0: greedy; above 0: sample at this temperature."),
             seed: int = typer.Option(0, help="The sampling seed."),
             teacher: bool = typer.Option(True, help="Continue the prompt with the run's teacher too.")) -> None:
    """Continue a prompt, or answer a question (--chat), with a language-model run's student beside its teacher."""
    from distillery.app.workflows.generate import generate_text
    from distillery.errors import ConfigError

    if (prompt is None) == (chat is None):
        raise ConfigError("give either --prompt TEXT (to continue) or --chat QUESTION (to answer), not both or neither")
    texts = generate_text(run_dir, prompt if chat is None else chat, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, teacher=teacher, chat=chat is not None)
    if chat is not None:
        typer.echo(f"{'question':>8}: {chat}")
    for name, text in texts.items():
        typer.echo(f"{name:>8}: {text.strip() if chat is not None else prompt + text}")


@app.command()
@user_errors
def report(run_dirs: List[Path] = typer.Argument(..., help="Run directories to compare."),
           output: Path = typer.Option(Path("report"), "--output", "-o", help="Where to write the report."),
           title: str = typer.Option("Distillation report", help="The report's title.")) -> None:
    """Write a Markdown + HTML report with plots comparing finished runs."""
    from distillery.eval.report import write_report

    written = write_report(run_dirs, output, title=title)
    typer.echo(f"report written: {written['html']} and {written['markdown']}")


@app.command()
@user_errors
def demo(dataset: str = typer.Option("digits", help="digits (embedded, under 3 minutes) or fashion-mnist."),
         output_dir: Path = typer.Option(Path("demo-out"), help="Where the three runs and the report go."),
         overwrite: bool = typer.Option(False, help="Replace the runs of an earlier demo."),
         seed: int = typer.Option(0, help="Random seed."),
         quiet: bool = QUIET) -> None:
    """Teacher -> student from scratch -> distilled student on an embedded dataset, then the report."""
    from distillery.app.workflows.demo import demo as run_demo

    set_verbosity(quiet=quiet, debug=DEBUG["on"])
    result = run_demo(dataset, output_dir, overwrite=overwrite, seed=seed, progress=not quiet)
    if result.setting:
        typer.echo(f"Setting: {result.setting}.\n")
    typer.echo(result.table)
    typer.echo(f"\nreport: {result.report['html']}")


@app.command()
@user_errors
def export(checkpoint: Path = typer.Argument(..., help="A run directory or a .safetensors checkpoint."),
           format_: str = typer.Option("onnx", "--format", help="onnx, pt2 (torch.export's ExportedProgram), or "
                                                                "huggingface (a language model's folder for "
                                                                "transformers)."),
           output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                 help="Where to write it (default: <run>/model.onnx or .pt2, "
                                                      "<run>/huggingface/)."),
           tolerance: float = typer.Option(EXPORT_TOLERANCE,
                                           help="Largest absolute logit difference from PyTorch accepted."),
           allow_factory: List[str] = ALLOW_FACTORY,
           adapters: bool = typer.Option(False, "--adapters", help="With --format huggingface, a LoRA run's adapters "
                                                                  "alone (default: merged into the weights).")) -> None:
    """Export a checkpoint's model (the student only) and verify it against PyTorch on its test set."""
    from distillery.compress import export_model

    result = export_model(checkpoint, format=format_, output=output, tolerance=tolerance,
                          allow_factories=allow_factory, adapters=adapters)
    typer.echo(f"{result.path}: {result.parameters:,} parameters, {result.size_bytes / 1024:.1f} KiB")
    checked = ("rows of seeded token ids, loaded back with transformers" if result.format == "huggingface"
               else "test samples")
    typer.echo(f"  verified on {result.samples} {checked}: largest logit difference from PyTorch "
               f"{result.max_abs_diff:.2g} (tolerance {result.tolerance:g})")


@app.command()
@user_errors
def quantize(checkpoint: Path = typer.Argument(..., help="A run directory or a .safetensors checkpoint."),
             mode: str = typer.Option("auto", help="auto (static with convolutions, else dynamic), dynamic or static."),
             calibration_samples: Optional[int] = typer.Option(
                 None, help="Training samples that calibrate static quantization (default 512)."),
             calibration_dataset: Optional[str] = typer.Option(None, help="Calibrate on this dataset's training split."),
             calibration_path: Optional[str] = typer.Option(None, help="Where that dataset's files are."),
             output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="Where to write it (default: <run>/model.int8.onnx)."),
             allow_factory: List[str] = ALLOW_FACTORY) -> None:
    """Quantize a checkpoint's model to an int8 ONNX model and compare it with the fp32 one on the test set."""
    from distillery.compress import quantize_model

    result = quantize_model(checkpoint, mode=mode, calibration_samples=calibration_samples,
                            calibration_dataset=calibration_dataset, calibration_path=calibration_path, output=output,
                            allow_factories=allow_factory)
    calibration = f", calibrated on {result.calibration_samples} samples" if result.calibration_samples else ""
    typer.echo(f"{result.path}: int8, {result.mode} quantization{calibration}")
    drop = f"  ({-result.accuracy_drop_points:+.2f} points: DROP FLAGGED)" if result.accuracy_drop_flagged else ""
    typer.echo(f"  accuracy   fp32 {result.fp32_accuracy:.2%}  int8 {result.int8_accuracy:.2%}  "
               f"on {result.samples:,} test samples{drop}")
    typer.echo(f"  size       fp32 {result.fp32_size_bytes / 1024:.1f} KiB  int8 {result.int8_size_bytes / 1024:.1f} KiB")
    typer.echo(f"  agreement  {result.agreement:.2%} of top-1 predictions")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


@app.command("compress-report")
@user_errors
def compress_report_command(
        teacher: Path = typer.Option(..., help="The teacher's checkpoint."),
        scratch: Path = typer.Option(..., help="The student trained from scratch."),
        distilled: Path = typer.Option(..., help="The distilled student."),
        output_dir: Path = typer.Option(Path("compress-report"), "--output-dir", "-o",
                                        help="Where the ONNX models and the report go."),
        threads: Optional[int] = typer.Option(None, min=1, help="ONNX Runtime threads (default: torch's)."),
        allow_factory: List[str] = ALLOW_FACTORY) -> None:
    """Teacher and distilled student in fp32 and int8, and the student from scratch, measured in ONNX Runtime."""
    from distillery.compress import compress_report

    result = compress_report(teacher, scratch, distilled, output_dir, threads=threads, allow_factories=allow_factory)
    typer.echo(result.table)
    typer.echo(f"report written: {result.markdown}, {result.json} and {result.plot}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
