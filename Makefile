# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app realtime dashboards tests load_tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m load_tests.run_bench

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
