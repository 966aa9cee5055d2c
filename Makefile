# The README's two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install system-deps tools run test test-unit bench gpu-check dashboard lint format clean

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

# On a CUDA machine, in an environment with the project installed over CUDA torch (`pip install -e '.[test]'`;
# `make install` pins the CPU wheel): the GPU tests, then the chat workload on the 0.5B and 1.5B shapes at 1, 16
# and 64 clients against transformers serve, each a BENCHMARKS.md section. Sized for under 8 minutes on one H200.
GPU_PYTHON ?= python3
GPU_BENCH := --chat-clients 1,16,64 --concurrency 1,16 --chats 4
gpu-check:
	$(GPU_PYTHON) -m pytest -m gpu -q tests/test_gpu.py
	$(GPU_PYTHON) bench/suite.py --shape qwen2.5-0.5b $(GPU_BENCH) --label gpu-qwen2.5-0.5b
	$(GPU_PYTHON) bench/suite.py --shape qwen2.5-1.5b $(GPU_BENCH) --label gpu-qwen2.5-1.5b

# The chart's Grafana dashboard (charts/qwen-chat/dashboards/qwen-chat.json) is generated: edit dashboards/*.py,
# then `make dashboard`; tests/test_monitoring.py fails when the committed JSON differs (`--check`).
dashboard: install
	$(BIN)/python -m dashboards.qwen_chat

lint: install
	$(BIN)/ruff check service tests bench docs dashboards
	$(BIN)/ruff format --check service tests bench docs dashboards
	$(BIN)/mypy

format: install
	$(BIN)/ruff format service tests bench docs dashboards
	$(BIN)/ruff check --fix service tests bench docs dashboards

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache test-output
