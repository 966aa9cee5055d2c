# The README's two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install run test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU wheel first, so nothing below can pull a multi-GB CUDA build.
	$(PIP) install --quiet --constraint constraints-cpu.txt torch
	$(PIP) install --quiet --constraint constraints-cpu.txt -e '.[test,lint]'
	touch $(STAMP)

run: install
	$(BIN)/qwen-chat serve --dev

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests
	$(BIN)/mypy

format: install
	$(BIN)/ruff format service tests
	$(BIN)/ruff check --fix service tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
