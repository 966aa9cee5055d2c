# The README's two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip
# The locked dependency sets (docs/dependencies.md): every package but torch, pinned with its hashes.
# $(LOCK) is what the service runs (pyproject's dependencies), which the image installs; $(DEV_LOCK) adds the
# test and lint extras, resolved with $(LOCK) as a constraint so every package both hold has the same version
# in both; make install reads it. `make lock` rewrites both with the uv commands below, which their headers
# record (tests/unit/test_lock.py checks all of it).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
LOCK_OPTIONS := --constraint constraints-cpu.txt --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--generate-hashes --no-emit-package torch
LOCK_ARGS := pyproject.toml $(LOCK_OPTIONS) --output-file $(LOCK)
DEV_LOCK_ARGS := pyproject.toml --extra test --extra lint --constraint $(LOCK) $(LOCK_OPTIONS) \
	--output-file $(DEV_LOCK)
# What the CUDA image adds (docker/Dockerfile): resolved against $(LOCK); triton comes with CUDA torch.
CUDA_LOCK := docker/requirements-cuda.lock
CUDA_LOCK_ARGS := docker/requirements-cuda.in --constraint $(LOCK) $(LOCK_OPTIONS) --no-emit-package triton \
	--output-file $(CUDA_LOCK)
UV_VERSION := 0.13.8
UV := .tools/uv/bin/uv
# Where the CPU wheel of torch lies, so the lock holds its CPU dependencies and no CUDA ones: pip's find-links here.
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)

.PHONY: install lock system-deps tools run test test-unit bench gpu-check gpu-wheels gpu-rehearse dashboard \
	lint format clean

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

$(STAMP): pyproject.toml constraints-cpu.txt $(LOCK) $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# Everything but torch exactly as locked (the runtime set and the test and lint extras), each file checked
	# against its hash; nothing is resolved here.
	$(PIP) install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	# The CPU wheel of torch (its dependencies are in the lock), then the project, built with the locked setuptools.
	$(PIP) install --quiet --no-deps --constraint constraints-cpu.txt torch
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

# Rewrites $(LOCK), then $(DEV_LOCK) against it, keeping every pin that still fits; `make lock UPGRADE=1` takes
# the newest. The order matters: the dev lock is constrained by the runtime lock just written.
LOCK_FLAGS = $(foreach dir,$(TORCH_FIND_LINKS),--find-links $(dir)) $(if $(UPGRADE),--upgrade)
LOCK_TRAILER = echo "\# Resolved beside $$(grep '^torch==' constraints-cpu.txt) (constraints-cpu.txt), installed unhashed." >>
lock:
	@[ "$$($(UV) --version 2>/dev/null | cut -d' ' -f2)" = $(UV_VERSION) ] || { \
	  $(PYTHON) -m venv --clear .tools/uv && .tools/uv/bin/python -m pip install --quiet uv==$(UV_VERSION); }
	$(UV) pip compile $(LOCK_ARGS) $(LOCK_FLAGS)
	$(LOCK_TRAILER) $(LOCK)
	$(UV) pip compile $(DEV_LOCK_ARGS) $(LOCK_FLAGS)
	$(LOCK_TRAILER) $(DEV_LOCK)
	$(UV) pip compile $(CUDA_LOCK_ARGS) $(LOCK_FLAGS)
	$(LOCK_TRAILER) $(CUDA_LOCK)

run: install
	$(BIN)/qwen-chat serve --dev

test: install system-deps tools
	$(BIN)/python -m pytest

# The pure pieces (tests/unit/): seconds, no servers, no model, no torch.
test-unit: install
	$(BIN)/python -m pytest tests/unit -q

# The benchmark suite (bench/suite.py): tiny model by default, `make bench ARGS="--model PATH"` for another;
# then the hybrid section (bench/hybrid.py: Qwen3.5-0.8B's shape, `HYBRID_ARGS="--model PATH"` for another);
# then guidellm, the client vLLM's docs recommend, against ours and transformers serve (bench/guidellm_run.py:
# the tiny model and the 0.5B shape, `GUIDELLM_ARGS="--model PATH"` for another; guidellm installs itself
# into .tools/guidellm beside the CPU wheel of torch, from $(TORCH_FIND_LINKS)).
bench: install
	$(BIN)/python -m bench.suite $(ARGS)
	$(BIN)/python -m bench.hybrid $(HYBRID_ARGS)
	TORCH_FIND_LINKS="$(TORCH_FIND_LINKS)" $(BIN)/python -m bench.guidellm_run $(GUIDELLM_ARGS)

# On a CUDA machine, in an environment with the project installed over CUDA torch (`pip install -e '.[test]'`;
# `make install` pins the CPU wheel): the GPU tests, then the chat workload on the 0.5B and 1.5B shapes at 1, 16
# and 64 clients against transformers serve, each a BENCHMARKS.md section. Sized for under 8 minutes on one H200.
GPU_PYTHON ?= python3
GPU_BENCH := --chat-clients 1,16,64 --concurrency 1,16 --chats 4
gpu-check:
	$(GPU_PYTHON) -m pytest -m gpu -q tests/test_gpu.py
	$(GPU_PYTHON) -m bench.suite --shape qwen2.5-0.5b $(GPU_BENCH) --label gpu-qwen2.5-0.5b
	$(GPU_PYTHON) -m bench.suite --shape qwen2.5-1.5b $(GPU_BENCH) --label gpu-qwen2.5-1.5b
	$(GPU_PYTHON) -m bench.step_overhead --device cuda --shape qwen2.5-1.5b

# A machine lent through this workplace's device tool (bare: Python 3.12, CUDA torch, no network, 64 MiB a
# call) runs the same checks as bench/device/check.sh, sized for its lease (docs/gpu-check.md). gpu-wheels puts
# the cp312 wheels it lacks, at the locked versions, into .whl/ (bench/device/wheels.py: fails when a needed
# package is missing or the wheels and working tree pass 56 MiB); then call the tool's `run` with command
# "bash bench/device/check.sh", carry [".whl"], timeout_s 540. gpu-rehearse runs that script here on the CPU,
# with tiny settings, against a stand-in for the machine's packages (needs the network for pip download).
gpu-wheels: install
	$(BIN)/python -m bench.device.wheels

gpu-rehearse: gpu-wheels
	REHEARSE=1 bash bench/device/check.sh

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
