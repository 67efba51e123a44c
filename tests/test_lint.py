"""The code is ruff-clean under the project's settings ([tool.ruff] in pyproject.toml: 120 columns, pyflakes,
pycodestyle, import order), and the size limits of the layout hold: no function in src/ over 80 lines, no module
over 450."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450
#: known debt, each held at its present length so that it can only shrink: the page's layout, one gradio Blocks
KNOWN_LONG = {"src/ddpm/web/app.py:build_app": 130}


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    if not ruff:
        pytest.importorskip("ruff")
    done = subprocess.run([*cmd, "check", "--no-cache", "src", "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_long_functions_or_modules_in_src():
    too_long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(ROOT)}:{node.name}"
                if lines > KNOWN_LONG.get(name, MAX_FUNCTION_LINES):
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "split these: " + "; ".join(too_long)
