# Fresh-machine entry points. `make repro` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test lint

setup: $(VENV)/.installed

# the scale-out extra (Ray, psycopg): what the tests of `study run --jobs` and `sibeatgan server` need
$(VENV)/.installed-scale: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,scale]'
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build of torch first; `pip install -e .` then keeps it
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## Fetch MIT-BIH (from $$MITDB_DIR, else PhysioNet), verify it, and run the DVC pipeline.
repro: setup
	sibeatgan fetch-data
	# a copy of the tree without its own .git: DVC works without git there
	[ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$$(pwd -P)" ] || dvc config --local core.no_scm true
	dvc repro

## Unit tests; the integration tests also run when MITDB_DIR points at the records.
test: setup $(VENV)/.installed-scale
	ruff check src tests research
	ruff format --check src tests research
	pytest -q -ra

lint: setup
	ruff check src tests research && ruff format --check src tests research
