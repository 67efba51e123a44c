# Two commands do all the set-up on a fresh machine:
#   make demo   installs ddpm, trains the small preset on the embedded digits (16-26 minutes on 2 CPU cores; PRESET=digits-fast:
#               about a third of that), samples 64 images
#   make test   installs ddpm with its test extras and runs the test suite
PYTHON ?= python3
RUN ?= runs/digits
# the U-Net preset and its recipe: digits, or digits-fast for a third of the minutes (make demo PRESET=digits-fast)
PRESET ?= digits

.PHONY: install install-test demo test bench

# Keep a torch that is already importable (CPU, CUDA or ROCm build); only install one when there is none.
# TORCH names the build to install then (override: make demo TORCH="torch==2.9.1").
TORCH ?= torch==2.13.0
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -q -e .

install-test:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	@if [ -d "$(RUN)/checkpoints" ]; then \
	  $(PYTHON) -m ddpm train --resume $(RUN); \
	else \
	  $(PYTHON) -m ddpm train --run-dir $(RUN) --preset $(PRESET); \
	fi
	$(PYTHON) -m ddpm sample $(RUN) -n 64 --chain 8

test: install-test
	$(PYTHON) -m pytest -n 2 tests

bench: install
	$(PYTHON) benchmarks/main_job.py
