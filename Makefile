# Two commands do all the set-up on a fresh machine:
#   make demo   — create/refresh .venv, then run the main job on the built-in default example
#   make test   — create/refresh .venv, then run the test suite (and lint)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/unialign demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks
