# The README's commands. Everything installs itself into ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-postgres lint typecheck check bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "authkeep needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@ $(VENV)/.runtime

## run: serve authkeep on SQLite under ./data with zero configuration
run: $(VENV)/.runtime
	$(BIN)/authkeep serve

## test: the whole suite, on SQLite and on a real PostgreSQL (started by the suite if needed)
test: $(VENV)/.dev
	$(BIN)/pytest

## test-postgres: only the PostgreSQL half (CI runs it again against AUTHKEEP_TEST_DATABASE_URL)
test-postgres: $(VENV)/.dev
	$(BIN)/pytest -m postgres

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(VENV)/.dev
	$(BIN)/mypy

## check: lint, types and tests — run before every push
check: lint typecheck test

bench: $(VENV)/.dev
	@for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
