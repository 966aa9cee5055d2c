# The README's two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install system-deps tools run test test-unit bench lint format clean

install: $(STAMP)

# Debian packages the tests use: promtool (prometheus), chromium and redis-server. Installed when missing and apt-get can run.
SYSTEM_PACKAGES := prometheus chromium fonts-dejavu-core redis-server
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v redis-server >/dev/null || ! [ -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "warning: install Debian's $(SYSTEM_PACKAGES) or the tests that use them fail"; fi; \
	fi

# helm, kubectl, checkov, kubernetes-validate, hadolint, check-jsonschema, zizmor into .tools/bin (chart and image tests).
tools:
	PYTHON=$(PYTHON) .ci/install-tools

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU wheel first, so nothing below can pull a multi-GB CUDA build.
	$(PIP) install --quiet --constraint constraints-cpu.txt torch
	$(PIP) install --quiet --constraint constraints-cpu.txt -e '.[test,lint]'
	touch $(STAMP)

run: install
	$(BIN)/qwen-chat serve --dev

test: install system-deps tools
	$(BIN)/python -m pytest

# The pure pieces (tests/unit/): seconds, no servers, no model, no torch.
test-unit: install
	$(BIN)/python -m pytest tests/unit -q

# The benchmark suite (bench/suite.py): tiny model by default, `make bench ARGS="--model PATH"` for another.
bench: install
	$(BIN)/python bench/suite.py $(ARGS)

lint: install
	$(BIN)/ruff check service tests bench docs
	$(BIN)/ruff format --check service tests bench docs
	$(BIN)/mypy

format: install
	$(BIN)/ruff format service tests bench docs
	$(BIN)/ruff check --fix service tests bench docs

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache test-output
