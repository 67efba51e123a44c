"""Test-wide settings (one intra-op thread per test process) and fixtures.

The suite runs as two pytest-xdist workers on two cores; letting each worker also spawn two OpenMP threads
oversubscribes the cores and makes the tiny models used here many times slower, never faster.
"""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Gradio keeps uploads under one shared folder, named by content hash, and a page deletes its files when it closes:
# two test processes uploading the same picture would delete it under each other.  One folder per process (set in
# each, not inherited: pytest-xdist's workers start from the controller's environment).
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="ddpm-tests-gradio-")
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
# Trainings on folders decode them into the per-user data cache (ddpm.data.cache): one throw-away one per process.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ddpm-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

from ddpm.cli.main import main  # noqa: E402

torch.set_num_threads(1)


#: flags of a tiny ``ddpm train``: the tiny U-Net on scikit-learn's 8x8 digits, T = 20, batch 8, a metrics row per
#: step, no progress bar (import it in a test module with ``from conftest import TINY``)
TINY = ["--preset", "tiny", "--data", "sklearn-digits", "--image-size", "8", "--timesteps", "20",
        "--batch-size", "8", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny run folder trained for 3 steps through the CLI (untrained pictures, but every file in place), shared
    by the whole test process: tests read it and write only into folders of their own."""
    run_dir = tmp_path_factory.mktemp("tinyrun") / "run"
    assert main(["train", *TINY, "--run-dir", str(run_dir), "--steps", "3"]) == 0
    return run_dir


@pytest.fixture
def load_benchmark():
    """Import a script of benchmarks/ (not a package) by name, e.g. ``load_benchmark("unet_speed")``, with benchmarks/
    on the import path as ``python benchmarks/NAME.py`` has it (the scripts import their helpers as ``_common``);
    only for the command lines the docs show (tests/test_docs.py), never to test the library through a script."""
    def load(name: str):
        folder = Path(__file__).resolve().parents[1] / "benchmarks"
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(folder))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(folder))
        return module
    return load
