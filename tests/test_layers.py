"""The package's layers import one way (the import-linter contracts in pyproject.toml), and the only imports inside
functions are those of optional or heavy dependencies."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ddpm"
ROOT = SRC.parents[1]

#: modules that may be imported inside a function: optional extras, heavy plotting, platform-specific probes
LAZY_ALLOWED = ("matplotlib", "sklearn", "torch_fidelity", "diffusers", "gradio", "mlxtend", "torch.utils._triton",
                "gradio_client", "pyarrow", "fcntl", "torch.utils.tensorboard", "wandb")


def test_import_contracts_hold():
    importlinter_cli = pytest.importorskip("importlinter.cli")
    assert importlinter_cli.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_every_module_sits_in_a_layer():
    """A new top-level module would escape the contracts: only the package files may sit beside the layers."""
    assert sorted(p.name for p in SRC.glob("*.py")) == ["__init__.py", "__main__.py", "_version.py"]


def test_function_level_imports_are_only_of_optional_or_heavy_dependencies():
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    names = [("." * node.level) + (node.module or "")]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                found += [f"{path.relative_to(SRC)}:{node.lineno} {n}" for n in names if not n.startswith(LAZY_ALLOWED)]
    assert found == []
