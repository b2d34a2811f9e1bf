# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench mixed soak clean

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

# The mixed clinical day (60 s), and its soak (SOAK_MINUTES, 30 by default; --soak-hours 72 by hand).
mixed: $(STAMP)
	$(BIN)/python -m load_tests.run_mixed --seconds 60

SOAK_MINUTES ?= 30
soak: $(STAMP)
	$(BIN)/python -m load_tests.run_mixed --soak-minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
