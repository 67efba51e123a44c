"""The OpenMP spin default (runtime/threads.py): set when ddpm is imported, before torch starts its pool, and
never over a policy the user chose.  How much it matters is measured by benchmarks/busy_machine.py, not here."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm.runtime.threads import DEFAULT_SPINCOUNT, USER_POLICY_VARIABLES, apply_default


def test_the_default_is_set_only_when_the_user_set_no_policy():
    env = {}
    assert apply_default(env) and env == {"GOMP_SPINCOUNT": DEFAULT_SPINCOUNT}
    for name in USER_POLICY_VARIABLES:
        env = {name: "user's"}
        assert not apply_default(env) and env == {name: "user's"}


def _spincount_seen_by_a_fresh_process(extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in USER_POLICY_VARIABLES}
    code = "import ddpm, os, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.split()


@pytest.mark.parametrize("extra, expected", [
    ({}, [DEFAULT_SPINCOUNT, "None"]),
    ({"GOMP_SPINCOUNT": "300000"}, ["300000", "None"]),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ["None", "PASSIVE"]),
])
def test_importing_ddpm_sets_the_default_in_a_fresh_process(extra, expected):
    assert _spincount_seen_by_a_fresh_process(extra) == expected


def test_the_default_comes_before_any_import_that_could_start_torch():
    """libgomp reads GOMP_SPINCOUNT once, when torch's pool starts: ddpm/__init__.py must set it before it imports
    anything else of the package (the threads module itself imports only os)."""
    pkg = Path(__file__).resolve().parents[1] / "src" / "ddpm"
    body = ast.parse((pkg / "__init__.py").read_text()).body
    statements = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first, second = statements[0], statements[1]
    assert isinstance(first, ast.ImportFrom) and first.module == "runtime.threads"
    assert isinstance(second, ast.Expr) and second.value.func.id == first.names[0].asname
    threads = ast.parse((pkg / "runtime" / "threads.py").read_text())
    imported = {a.name for n in ast.walk(threads) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module for n in ast.walk(threads) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "annotations", "os"}
    runtime_init = ast.parse((pkg / "runtime" / "__init__.py").read_text())
    assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(runtime_init))
