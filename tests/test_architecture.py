"""The import directions docs/architecture.md describes hold: layers point one way and no package's modules
import each other in a cycle (type-only imports included), as the contracts in .importlinter say."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                             "lint_imports_command()", "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "7 kept, 0 broken" in result.stdout


def test_every_module_in_the_layers_is_named_in_architecture_md():
    # A new package or application module must find its place in the document (and in .importlinter).
    text = (ROOT / "docs" / "architecture.md").read_text()
    packages = {path.name for path in (ROOT / "distillery").iterdir() if (path / "__init__.py").is_file()}
    app_modules = {path.stem for path in (ROOT / "distillery" / "app").rglob("*.py") if path.stem != "__init__"}
    app_modules |= {path.name for path in (ROOT / "distillery" / "app").iterdir() if (path / "__init__.py").is_file()}
    missing = sorted(name for name in packages | app_modules if not re.search(rf"\b{name}\b", text))
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_no_two_modules_share_a_name():
    # A module's name says which one it is: app/teachers.py beside the teachers/ package, or two report.py, made
    # every import line a question.
    modules = [path for path in (ROOT / "distillery").rglob("*.py") if path.stem != "__init__"]
    packages = {path.name for path in (ROOT / "distillery").rglob("*") if (path / "__init__.py").is_file()}
    names = [path.stem for path in modules] + sorted(packages)
    shared = sorted({name for name in names if names.count(name) > 1})
    assert not shared, f"modules or packages that share a name: {shared}"


def test_the_run_reads_what_a_method_needs_never_its_name():
    # A method is one file: the skeleton, the steps and the tasks learn what it needs from its Needs and Options.
    # The one name they may write is "supervised", the method of a run without distill:, and the config its default.
    from distillery.methods import method_names

    names, app = set(method_names()), ROOT / "distillery" / "app"
    allowed = {(app / "steps" / "method.py", "supervised"), (app / "config" / "distill.py", "hinton")}
    files = [app / "skeleton.py", *(app / "steps").glob("*.py"), *(app / "tasks").glob("*.py"),
             *(app / "config").glob("*.py")]
    named = sorted((str(path.relative_to(ROOT)), node.lineno, node.value) for path in files
                   for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and node.value in names and (path, node.value) not in allowed)
    assert not named, f"method names written outside methods/: {named}"
