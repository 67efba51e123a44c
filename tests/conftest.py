"""Test-wide settings (one intra-op thread per test process) and fixtures.

The suite runs as two pytest-xdist workers on two cores; letting each worker also spawn two OpenMP threads
oversubscribes the cores and makes the tiny models used here many times slower, never faster.
"""
import importlib.util
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def load_benchmark():
    """Import a script of benchmarks/ (not a package) by name, e.g. ``load_benchmark("unet_speed")``."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
