# Two commands do all the set-up on a fresh machine:
#   make demo   installs ddpm, trains the digits-fast preset on the embedded digits and their labels (about 4-7
#               minutes on 2 CPU cores), samples 64 images (every digit in turn) and their denoising chain
#   make test   installs ddpm with its test extras and runs the test suite
PYTHON ?= python3
RUN ?= runs/demo
# the `ddpm train` flags of the demo (benchmarks/main_job.py reads them from here); make demo TRAIN= trains `ddpm train`'s own
# digits recipe (unconditional, 32x32, 3,000 steps: about three times the minutes)
TRAIN ?= --preset digits-fast --class-cond

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
	  $(PYTHON) -m ddpm train --run-dir $(RUN) $(TRAIN); \
	fi
	$(PYTHON) -m ddpm sample $(RUN) -n 64 --chain 8

test: install-test
	$(PYTHON) -m pytest -n 2 tests

bench: install
	$(PYTHON) benchmarks/main_job.py
