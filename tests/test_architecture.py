"""The import directions docs/architecture.md describes hold: layers point one way and no package's modules
import each other in a cycle (type-only imports included), as the contracts in .importlinter say."""
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
    assert "3 kept, 0 broken" in result.stdout


def test_every_module_in_the_layers_is_named_in_architecture_md():
    # A new package or application module must find its place in the document (and in .importlinter).
    text = (ROOT / "docs" / "architecture.md").read_text()
    packages = {path.name for path in (ROOT / "distillery").iterdir() if (path / "__init__.py").is_file()}
    app_modules = {path.stem for path in (ROOT / "distillery" / "app").glob("*.py") if path.stem != "__init__"}
    missing = sorted(name for name in packages | app_modules if not re.search(rf"\b{name}\b", text))
    assert not missing, f"docs/architecture.md does not mention {missing}"
