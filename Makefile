# longstream: `make demo` runs the Gradio app on the shipped checkpoints, `make test` the tests.
# Both build the virtual environment first (idempotent; an existing .venv is reused).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.longstream-setup
export LONGSTREAM_DATA ?= $(abspath ../shared/data)

.PHONY: setup test test-all demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# torch first, pinned, so no dependency can pull another multi-GB build
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -c "import torchaudio" 2>/dev/null || $(BIN)/pip install -q --no-deps torchaudio==2.11.0
	$(BIN)/pip install -q -e ".[demo,dev]" torch==2.14.1
	@# compile the optional C++ CPU kernels once (cached; falls back to pure PyTorch if it cannot)
	$(BIN)/python -m longstream.backbones.ops.cpu_kernels || true
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -x --timeout=900 tests

test-all: setup
	$(BIN)/python -m pytest -q --timeout=1800 -m "" tests

demo: setup
	$(BIN)/longstream demo

bench: setup
	$(BIN)/python benchmarks/backbones.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
