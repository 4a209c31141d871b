# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint types unit tests bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bpsync demo

lint: $(STAMP)
	$(BIN)/ruff check sync tests bench migrations
	$(BIN)/ruff format --check sync tests bench migrations

types: $(STAMP)
	$(BIN)/mypy sync

# the quick loop while coding: every test but the slow ones (kills, storms, benches)
unit: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

tests: $(STAMP)
	$(BIN)/pytest -q

test: lint types tests

bench: $(STAMP)
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/cost.py
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/scale.py --pairs
	$(BIN)/python bench/storm.py
	$(BIN)/python bench/instructions.py

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
