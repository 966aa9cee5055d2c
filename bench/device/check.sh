#!/usr/bin/env bash
# The device check: the one command a lent GPU machine (H100 or H200) runs, inside its lease
# (docs/gpu-check.md). Make the wheels here first (`make gpu-wheels`), then call the device tool:
#
#     run  command="bash bench/device/check.sh"  carry=[".whl"]  timeout_s=540
#
# The machine is bare (Python 3.12, CUDA torch, no network): the carried wheels go into $SITE, the project runs
# from the working tree (PYTHONPATH), and `qwen-chat` and `transformers` launchers are written next to
# python3, where bench/serving.py and bench/transformers_serve.py look for them. Then, each step under its own
# `timeout` and all of them under one DEADLINE, so that a hang cannot eat the lease:
#   tests       the `gpu` tests (tests/test_gpu.py) on the GPU
#   smoke       `qwen-chat serve` on the tiny model and `qwen-chat smoke-test` against it, its log kept
#   suite-0.5b  the chat workload at 1, 16 and 64 clients against `transformers serve`, the 0.5B shape
#   suite-1.5b  the same on the 1.5B shape
#   overhead    bench/step_overhead.py on the 1.5B shape: each step's time outside the forward, 1 and 64 rows
#   hybrid      bench/hybrid.py on the Qwen3.5-0.8B shape
# On the GPU every step runs with QWEN_CHAT_CUDA_GRAPHS=on (graphs on SDPA: the machine has no flash
# attention, so no async batching and no decode kernel), and `nvidia-smi` samples the GPU's utilization
# every 250 ms; each step's mean goes into the summary (the samples into logs.tar.gz).
# STEPS="tests suite-1.5b" picks some. What comes back under $OUT (8 files at most, flat): check.log (all of
# it), summary.md (each step's exit status and time), pytest.log, BENCHMARKS.md (this repository's, with the
# two suite sections rewritten), hybrid.md (the hybrid section alone), results.tar.gz (bench/results/ files:
# untar in the repository root) and logs.tar.gz (server logs, pytest's JUnit XML, the installed versions).
#
# CPU rehearsal, on a machine with the project's .venv: `REHEARSE=1 bash bench/device/check.sh`. It fetches
# the same wheels for this Python (3.11) into $REHEARSE_DIR, makes a throwaway interpreter that sees only the
# packages the machine has (bench/device/wheels.py --image), installs the wheels into a fresh target the same
# way, writes the launchers, and runs the same steps with tiny settings on the CPU; it also installs the cp312
# .whl set with a Python 3.12 if there is one and imports what needs no torch. See docs/gpu-check.md for what
# that proves and what it cannot.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
REHEARSE=${REHEARSE:-}

if [ -n "$REHEARSE" ]; then
  RDIR=${REHEARSE_DIR:-/tmp/qwen-chat-rehearse}
  OUT=${OUT:-$RDIR/out}
  WORK=${WORK:-$RDIR/work}
  SITE=${SITE:-$RDIR/site}
  WHL=$RDIR/whl-cp311
  PY=$RDIR/python/bin/python3
  DEVICE=cpu
  STEPS=${STEPS:-tests smoke suite-0.5b suite-1.5b overhead hybrid}
  DEADLINE=${DEADLINE:-1200}
  # The gpu tests deselect themselves on a CPU: engine tests on the same fixtures stand in for them.
  PYTEST_ARGS=(-q tests/test_gpu.py tests/test_tiny_model.py tests/test_engine.py::test_close_frees_the_model
               tests/test_engine.py::test_many_concurrent_requests_all_finish)
  SMALL=(--chat-clients 1,2 --turns 2 --max-reply 8 --concurrency 1,2 --chats 1 --tokens 8)
  SUITE_05=(--device cpu "${SMALL[@]}" --skip-engine-thread --skip-openai-fields --label rehearse-tiny)
  SUITE_15=(--device cpu "${SMALL[@]}" --skip-engine-thread --skip-openai-fields --label rehearse-tiny-2)
  HYBRID=(--clients 2 --turns 2 --max-reply 8 --tokens 8 --label rehearse-hybrid-tiny)
  OVERHEAD=(--device cpu --rows 1 4 --steps 10)
  BOXES=(420 120 480 480 120)
else
  WORK=${WORK:-/tmp/qwen-chat-device}
  SITE=${SITE:-/tmp/site}
  WHL=$REPO/.whl
  PY=${PY:-python3}
  DEVICE=cuda
  STEPS=${STEPS:-tests smoke suite-0.5b suite-1.5b overhead hybrid}
  DEADLINE=${DEADLINE:-500}  # seconds for everything; the tool's timeout_s (540) leaves the rest
  PYTEST_ARGS=(-q -m gpu tests/test_gpu.py)
  # `make gpu-check`'s GPU_BENCH cut to fit: 2 turns, replies of at most 48 tokens, 2 greedy chats a client,
  # ours out of the box against `transformers serve` (the engine-thread layout skipped: a server less a shape).
  GPU=(--device cuda --chat-clients 1,16,64 --concurrency 1,16 --chats 2 --turns 2 --max-reply 48 --tokens 48
       --skip-engine-thread)
  SUITE_05=(--shape qwen2.5-0.5b "${GPU[@]}" --label gpu-qwen2.5-0.5b)
  SUITE_15=(--shape qwen2.5-1.5b "${GPU[@]}" --skip-openai-fields --label gpu-qwen2.5-1.5b)
  HYBRID=(--clients 16 --turns 2 --max-reply 32 --tokens 32 --label gpu-qwen3.5-0.8b-hybrid)
  OVERHEAD=(--device cuda --shape qwen2.5-1.5b --rows 1 64 --steps 40)
  BOXES=(150 45 130 100 60)
  export QWEN_CHAT_CUDA_GRAPHS=${QWEN_CHAT_CUDA_GRAPHS:-on}
fi
# Time boxes in seconds, each overridable: tests, smoke, each suite, hybrid, overhead.
BOX_TESTS=${BOX_TESTS:-${BOXES[0]}} BOX_SMOKE=${BOX_SMOKE:-${BOXES[1]}}
BOX_SUITE=${BOX_SUITE:-${BOXES[2]}} BOX_HYBRID=${BOX_HYBRID:-${BOXES[3]}} BOX_OVERHEAD=${BOX_OVERHEAD:-${BOXES[4]}}
UTIL=$WORK/logs/gpu-utilization.csv  # nvidia-smi's samples: timestamp, utilization.gpu [%]
RESERVE=15  # seconds kept for packing $OUT
: "${OUT:?OUT is unset: run this through the device tool, or with REHEARSE=1 here}"
mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$WORK/tmp" "$WORK/logs" "$WORK/stage/bench/results"
cp BENCHMARKS.md "$WORK/stage/BENCHMARKS.md"
export TMPDIR=$WORK/tmp HF_HOME=$WORK/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
SUMMARY=$WORK/summary.md

# Every process a step starts carries DEVICE_CHECK_STEP in its environment (servers run in sessions of their
# own, out of `timeout`'s reach); what is left of them after the step is killed, by process id.
sweep() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "DEVICE_CHECK_STEP=$1"; then
      echo "killing a leftover of $1: $pid $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-120)"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
}

# step NAME BOX COMMAND...: COMMAND under `timeout` (SIGINT, so Python unwinds and stops its servers; SIGKILL
# 20 s later), at most BOX seconds and never past DEADLINE; its status goes into the summary.
step() {
  local name=$1 box=$2 rc started status
  shift 2
  case " setup $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local left=$((DEADLINE - SECONDS - RESERVE))
  if ((left < 30)); then
    echo "=== $name: skipped, ${left}s left before the deadline"
    echo "| $name | - | 0 | $box | skipped: no time left | - |" >>"$SUMMARY"
    return 0
  fi
  ((box > left)) && box=$left
  echo "=== $name (at ${SECONDS}s, time box ${box}s): $*"
  started=$SECONDS
  local first
  first=0
  [ -f "$UTIL" ] && first=$(wc -l <"$UTIL")
  DEVICE_CHECK_STEP=$name-$$ timeout -s INT -k 20 "$box" bash -o pipefail -c '"$@"' "$name" "$@"
  rc=$?
  sweep "$name-$$"
  local busy
  busy=$(tail -n +"$((first + 1))" "$UTIL" 2>/dev/null | awk -F', ' '$2 + 0 == $2 + 0 {s += $2; n++}
    END {if (n) printf "%.0f %% of %d samples", s / n, n; else print "-"}')
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMED OUT" ;;
    *) status=FAILED ;;
  esac
  echo "=== $name: $status (exit $rc) in $((SECONDS - started))s, GPU busy: $busy"
  echo "| $name | $rc | $((SECONDS - started)) | $box | $status | $busy |" >>"$SUMMARY"
}

# overlay BASE_PYTHON DIR SITE...: a venv at DIR over BASE_PYTHON's interpreter that sees the packages in
# each SITE folder (a .pth file adds them, their own .pth files included) and has a bin/ of its own.
overlay() {
  local base=$1 dir=$2 purelib
  shift 2
  rm -rf "$dir"
  "$base" -m venv --without-pip "$dir" || return 1
  purelib=$("$dir/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  printf "import site; site.addsitedir('%s')\n" "$@" >"$purelib/device-image.pth"
  echo "$dir/bin/python3: a venv over $base, seeing $*"
}

rehearsal_setup() {
  # The same wheels for this Python, and an interpreter that sees only what the machine has (from .venv).
  local venv=$REPO/.venv/bin/python py312
  "$venv" -m bench.device.wheels --python-version 3.11 --dest "$WHL" --limit-mib 1000 | grep -v ' MiB  ' ||
    return 1
  rm -rf "$RDIR/image"
  "$venv" -m bench.device.wheels --image "$RDIR/image" || return 1
  overlay "$venv" "$RDIR/python" "$RDIR/image" || return 1
  # The cp312 set itself: installable by a CPython 3.12, and what needs no torch or numpy imports there.
  for py312 in ${PY312:-} python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 ""; do
    [ -n "$py312" ] && "$py312" -V >/dev/null 2>&1 && break
  done
  if [ -n "$py312" ] && [ -d "$REPO/.whl" ]; then
    rm -rf "$RDIR/site312"
    "$py312" -m pip install -q --no-index --no-deps --no-compile --target "$RDIR/site312" "$REPO"/.whl/*.whl &&
      PYTHONPATH=$RDIR/site312 "$py312" -c '
import fastapi, starlette, uvicorn, uvicorn_worker, gunicorn, websockets, httptools, watchfiles, pydantic
import pydantic_settings, structlog, limits, redis, msgspec, llguidance, openai, httpx, httpx2, typer
import huggingface_hub, tokenizers, regex, pluggy, iniconfig, prometheus_client, google.protobuf  # pytest: pygments
import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.instrumentation.fastapi
print("cp312 wheels: installed and imported with", __import__("sys").version.split()[0])' ||
      echo "WARNING: the cp312 wheels did not install or import with $py312"
  else
    echo "no Python 3.12 or no .whl here: the cp312 set itself is not checked"
  fi
}

setup() {
  if [ -n "$REHEARSE" ]; then rehearsal_setup || return 1; fi
  # The launchers go next to the interpreter; where its folder is read-only (or FORCE_OVERLAY is set), a
  # venv over it takes them. main reads back which interpreter the steps use.
  local bin
  bin=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))') || return 1
  if [ -n "${FORCE_OVERLAY:-}" ] || ! [ -w "$bin" ]; then
    # shellcheck disable=SC2046
    overlay "$PY" "$WORK/python" $("$PY" -c 'import site; print(" ".join(site.getsitepackages()))') || return 1
    PY=$WORK/python/bin/python3
  fi
  echo "$PY" >"$WORK/python-path"
  ls "$WHL"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHL: run 'make gpu-wheels' and carry .whl"; return 1; }
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHL"/*.whl || return 1
  export PYTHONPATH=$SITE:$REPO/service:$REPO
  # Launchers next to this python3 (the benchmarks look there): the project's scripts and the carried
  # transformers' (it comes first on the path), each pinned to this interpreter.
  "$PY" - <<'EOF' || return 1
import importlib.metadata as md, pathlib, sys, tomllib
bin_dir = pathlib.Path(sys.executable).parent
scripts = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]["scripts"]
scripts["transformers"] = next(iter(md.entry_points(group="console_scripts", name="transformers"))).value
for name, target in scripts.items():
    module, func = target.split(":")
    path = bin_dir / name
    # The guard as pip writes it: `transformers serve` spawns its model process, which re-reads this file.
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\n"
                    f"if __name__ == '__main__':\n    sys.exit({func}())\n")
    path.chmod(0o755)
    print(f"launcher {path} -> {target}")
EOF
  # Every command line parses, and the packages that matter load from where they should.
  "$PY" - "$@" <<'EOF' || return 1
import sys
import bench.suite
for line in " ".join(sys.argv[1:]).split(" :: "):  # each suite command line parses
    sys.argv = ["bench.suite", *line.split()]
    bench.suite.parse_args()
import fastapi, gunicorn, huggingface_hub, llguidance, pydantic, pytest, torch, transformers, uvicorn
from transformers.cli.serve import Serve  # `transformers serve` needs its serving extra
from qwen_chat.app import create_app
for module in (torch, transformers, huggingface_hub, fastapi, uvicorn, gunicorn, pydantic, llguidance, pytest):
    print(f"{module.__name__:16} {getattr(module, '__version__', '?'):14} {module.__file__}")
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  "$PY" -m pip list --path "$SITE" --format freeze >"$WORK/logs/site-packages.txt" 2>&1
  "$PY" -m pip list --format freeze >"$WORK/logs/pip-list.txt" 2>&1
}

run_tests() {
  # Only the plugins the tests use: the machine's own (pytest-benchmark, -cov, -xdist...) stay unloaded.
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -p anyio.pytest_plugin -p pytest_timeout -p no:cacheprovider \
    "$@" --junitxml="$WORK/logs/pytest-junit.xml" 2>&1 | tee -i "$OUT/pytest.log"
}

smoke() {
  # A server of ours with its output kept (the benchmarks' go nowhere), and one authenticated chat.
  local dir=$WORK/smoke port pid rc
  mkdir -p "$dir/credentials"
  printf 'device-check-key-0123456789abcdef' >"$dir/credentials/check"
  "$BIN/qwen-chat" make-tiny-model "$dir/tiny" >/dev/null || return 1
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  QWEN_CHAT_MODEL=$dir/tiny QWEN_CHAT_CREDENTIALS_DIR=$dir/credentials QWEN_CHAT_HOST=127.0.0.1 \
    QWEN_CHAT_PORT=$port QWEN_CHAT_DEVICE=$DEVICE setsid "$BIN/qwen-chat" serve >"$WORK/logs/smoke-serve.log" 2>&1 &
  pid=$!
  "$BIN/qwen-chat" smoke-test --url "http://127.0.0.1:$port" --credentials-dir "$dir/credentials" --timeout 60
  rc=$?
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  ((rc == 0)) || tail -n 40 "$WORK/logs/smoke-serve.log"
  return $rc
}

suite() {
  "$PY" -m bench.suite "$@" --out-dir "$WORK/stage/bench/results" --benchmarks "$WORK/stage/BENCHMARKS.md"
}

hybrid() {
  local model=()
  if [ -n "$REHEARSE" ]; then  # the tiny Qwen3.5 stands in for the 0.8B shape on a CPU
    "$BIN/qwen-chat" make-tiny-model --family qwen3_5 "$WORK/tiny-qwen3_5" >/dev/null || return 1
    model=(--model "$WORK/tiny-qwen3_5")
  fi
  "$PY" -m bench.hybrid "${model[@]}" "$@" --out-dir "$WORK/stage/bench/results" \
    --benchmarks "$WORK/stage/hybrid.md"
}

pack() {
  cp "$WORK/stage/BENCHMARKS.md" "$OUT/BENCHMARKS.md"
  [ -f "$WORK/stage/hybrid.md" ] && cp "$WORK/stage/hybrid.md" "$OUT/hybrid.md"
  tar -czf "$OUT/results.tar.gz" -C "$WORK/stage" bench/results
  find "$WORK/tmp" -name '*.log' -size -8M -exec cp --backup=numbered -t "$WORK/logs" {} + 2>/dev/null
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
  cp "$SUMMARY" "$OUT/summary.md"
}

main() {
  echo "device check: $(date -u +%FT%TZ), $(uname -n), rehearsal: ${REHEARSE:-no}, steps: $STEPS, deadline ${DEADLINE}s"
  nvidia-smi 2>&1 | head -n 20 || true
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 || true
  printf '| step | exit | seconds | time box | status | GPU busy (mean utilization) |\n|---|---|---|---|---|---|\n' \
    >"$SUMMARY"
  local util_pid=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 250 >"$UTIL" 2>&1 &
    util_pid=$!
  fi
  step setup 180 setup "${SUITE_05[@]}" :: "${SUITE_15[@]}"
  if grep -q '^| setup | 0 |' "$SUMMARY"; then
    export PYTHONPATH=$SITE:$REPO/service:$REPO
    PY=$(cat "$WORK/python-path")
    BIN=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')
    export BIN
  else
    echo "setup failed: nothing else runs"
    STEPS=""
  fi
  step tests "$BOX_TESTS" run_tests "${PYTEST_ARGS[@]}"
  step smoke "$BOX_SMOKE" smoke
  step suite-0.5b "$BOX_SUITE" suite "${SUITE_05[@]}"
  step suite-1.5b "$BOX_SUITE" suite "${SUITE_15[@]}"
  step overhead "$BOX_OVERHEAD" "$PY" -m bench.step_overhead "${OVERHEAD[@]}"
  step hybrid "$BOX_HYBRID" hybrid "${HYBRID[@]}"
  [ -n "$util_pid" ] && kill "$util_pid" 2>/dev/null
  pack
  echo "=== done at ${SECONDS}s"
  cat "$SUMMARY"
  ls -l "$OUT"
  ! grep -qE '\| (FAILED|TIMED OUT|skipped)' "$SUMMARY"
}

export -f overlay setup rehearsal_setup run_tests smoke suite hybrid
export REPO REHEARSE RDIR WORK SITE WHL PY DEVICE OUT UTIL
main 2>&1 | tee "$OUT/check.log"
