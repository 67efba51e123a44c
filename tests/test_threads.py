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


# ------------------------------------------------------------------------------------------ the thread governor

class _Machine:
    """A fake clock, /proc/stat and process CPU time: ``run(seconds, ours, others)`` advances them as if this
    process kept ``ours`` cores busy and other programs ``others`` cores."""

    def __init__(self):
        self.now, self.busy, self.own = 0.0, 1000.0, 5.0
        self.set_to = []

    def run(self, seconds, ours, others):
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds


def _governor(machine, max_threads=2):
    from ddpm.runtime.governor import ThreadGovernor
    return ThreadGovernor(max_threads=max_threads, window_s=2.0, cpus={0, 1}, busy_seconds=lambda: machine.busy,
                          own_seconds=lambda: machine.own, clock=lambda: machine.now,
                          set_threads=machine.set_to.append)


def test_the_governor_gives_a_core_to_a_neighbour_and_takes_it_back():
    m = _Machine()
    g = _governor(m)
    m.run(1.0, ours=2, others=0)
    g.tick()
    assert g.threads == 2 and m.set_to == []                       # within the window: nothing measured yet
    m.run(1.5, ours=2, others=0.05)
    g.tick()
    assert g.threads == 2 and m.set_to == []                       # idle machine: every core
    m.run(2.5, ours=1.3, others=0.7)                               # a neighbour starts; our spinning threads fight it
    g.tick()
    assert g.threads == 1 and m.set_to == [1] and g.others == pytest.approx(0.7)
    m.run(2.5, ours=1.0, others=1.0)                               # it keeps its core; we keep ours
    g.tick()
    assert g.threads == 1 and m.set_to == [1]
    m.run(2.5, ours=1.0, others=0.0)                               # it stops: both cores again
    g.tick()
    assert g.threads == 2 and m.set_to == [1, 2]


def test_the_governor_never_exceeds_its_maximum_nor_drops_below_one_thread():
    m = _Machine()
    g = _governor(m, max_threads=1)
    m.run(3.0, ours=1, others=0)
    g.tick()
    assert g.threads == 1 and m.set_to == []
    g = _governor(m, max_threads=2)
    m.run(3.0, ours=0.2, others=5.0)                               # others want more cores than there are
    g.tick()
    assert g.threads == 1 and m.set_to == [1]


def test_proc_stat_is_read_for_the_allowed_cores_only(tmp_path):
    from ddpm.runtime.governor import cpu_busy_seconds
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 900 100 0 0 0 0 0 0\n"
                    "cpu0 100 10 50 1000 7 1 2 3 0 0\n"
                    "cpu1 400 0 200 900 0 0 0 0 0 0\n"
                    "intr 12345\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert cpu_busy_seconds({0}, str(stat)) == pytest.approx((100 + 10 + 50 + 1 + 2 + 3) / tick)  # not idle, iowait
    assert cpu_busy_seconds({0, 1}, str(stat)) == pytest.approx((166 + 600) / tick)
    assert cpu_busy_seconds({0}, str(tmp_path / "missing")) is None


def test_ddpm_threads_fixes_the_count_and_a_gpu_is_left_alone(monkeypatch):
    import torch

    from ddpm.runtime.governor import ThreadGovernor, governor_for
    before = torch.get_num_threads()
    try:
        fixed = governor_for("cpu", {"DDPM_THREADS": "1"})
        assert not isinstance(fixed, ThreadGovernor) and torch.get_num_threads() == 1
        assert not isinstance(governor_for("cpu", {"OMP_NUM_THREADS": "2"}), ThreadGovernor)
        assert not isinstance(governor_for("meta", {}), ThreadGovernor)
        assert isinstance(governor_for("cpu", {}), ThreadGovernor)
        for bad in ("0", "two"):
            with pytest.raises(ValueError, match="DDPM_THREADS"):
                governor_for("cpu", {"DDPM_THREADS": bad})
    finally:
        torch.set_num_threads(before)
