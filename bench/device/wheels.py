"""The wheels a lent GPU machine lacks, into .whl/ (`make gpu-wheels`), for bench/device/check.sh.

The machine (an H100 or H200, lent through this workplace's device tool) is bare: Python 3.12 with CUDA
torch, transformers and the packages in ON_DEVICE, no network. Everything else the service, `transformers
serve`, the `gpu` tests and the chat workload import travels as cp312 manylinux x86_64 wheels: CARRY, each at
the version requirements-dev.lock pins (the runtime lock's for every package the two share), downloaded here
with `pip download --no-deps`. The lock's version also replaces the machine's where it differs and matters:
transformers (the engine's adapter is written against the locked one, which needs huggingface-hub 2.x and
kernels), and the test tooling, so that pytest runs as in CI. Packages the machine has that are big or that
its torch shares (numpy, matplotlib's stack, uvloop, hf-xet, filelock, fsspec, ...) stay there: SKIPPED.

Then it checks what it fetched: every Requires-Dist of a carried wheel (its markers for CPython 3.12 on
x86-64 Linux, with the extras the project asks for) must be carried or on the machine, at a version the
machine is known to have where DEVICE_VERSIONS knows it; and the wheels plus the working tree that travels
with them must stay under --limit-mib (the tool takes 64 MiB a call). Wheels of other versions or packages
are removed, so that one install of .whl/*.whl sees one version of each.

    python -m bench.device.wheels [--dest .whl] [--python-version 3.12] [--limit-mib 56]
    python -m bench.device.wheels --image DIR   # the CPU rehearsal's stand-in for the machine's packages

`--python-version 3.11 --dest DIR` fetches the same set for this machine's Python (check.sh's CPU
rehearsal). `--image DIR` links into DIR this environment's installs of the ON_DEVICE packages, so that a
rehearsal interpreter sees what the machine has, and nothing more, under the carried wheels.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements-dev.lock"
CUDA_LOCK = REPO / "docker" / "requirements-cuda.lock"  # what the CUDA image adds: the hybrid kernels

# Packages the machine's image holds (this workplace's device notes, KINDS.md, as read on 2026-11-17).
ON_DEVICE_NAMES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
    cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
    execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
    httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
    jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
    mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
    nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
    opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
    pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
    pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
    zipp
"""
ON_DEVICE = frozenset(canonicalize_name(name) for name in ON_DEVICE_NAMES.split())
# The versions a session saw there (KINDS.md's pip list row, 2026-11); the rest are unknown from here.
DEVICE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "tiktoken": "0.14.0", "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0",
    "triton": "3.6.0", "sentencepiece": "0.2.2",
}  # fmt: skip

# What travels, each at the lock's version: pyproject's dependencies but torch, with what they need.
CARRY = (
    # the service (pyproject.toml's dependencies)
    "fastapi", "starlette", "uvicorn", "httptools", "watchfiles", "websockets", "python-dotenv", "gunicorn",
    "uvicorn-worker", "transformers", "tokenizers", "accelerate", "prometheus-client", "structlog",
    "pydantic", "pydantic-core", "pydantic-settings", "annotated-types", "typing-inspection", "limits",
    "redis", "deprecated", "wrapt", "msgspec", "llguidance", "opentelemetry-api", "opentelemetry-sdk",
    "opentelemetry-semantic-conventions", "opentelemetry-proto", "protobuf", "googleapis-common-protos",
    "opentelemetry-exporter-otlp-proto-http", "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-common", "opentelemetry-exporter-http-transport",
    "opentelemetry-instrumentation", "opentelemetry-instrumentation-asgi",
    "opentelemetry-instrumentation-fastapi", "opentelemetry-util-http", "asgiref", "requests", "urllib3",
    "certifi", "charset-normalizer", "idna", "anyio", "h11", "click", "typing-extensions", "packaging",
    # transformers 5.x: huggingface-hub 2.x (the machine's 1.x fails transformers' import-time check) and
    # what it brings, kernels, typer's stack for its CLI, and its `serving` extra for `transformers serve`
    "huggingface-hub", "httpx2", "httpcore2", "truststore", "kernels", "tomlkit", "regex", "tqdm", "typer",
    "rich", "markdown-it-py", "mdurl", "shellingham", "annotated-doc", "openai", "jiter", "sniffio",
    # the tests and the benchmarks: pytest as CI runs it, httpx for the clients
    "pytest", "pluggy", "iniconfig", "pytest-timeout", "httpx", "httpcore",
    # the CUDA image's own (docker/requirements-cuda.lock): flash-linear-attention's Triton kernels
    "flash-linear-attention", "fla-core",
)  # fmt: skip
# On the machine, and left there: big, or shared with its torch; any version there satisfies the project.
SKIPPED = (
    "numpy", "matplotlib", "pillow", "fonttools", "kiwisolver", "contourpy", "cycler", "pyparsing",
    "python-dateutil", "uvloop", "hf-xet", "pygments", "safetensors", "pyyaml", "psutil", "filelock",
    "fsspec",
)  # fmt: skip
# The extras the project asks for (pyproject.toml), whose requirements count too.
EXTRAS = {"transformers": {"serving"}, "uvicorn": {"standard"}, "limits": {"redis"}}
PLATFORMS = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014",
             "manylinux1", "manylinux_2_31")  # fmt: skip


def lock_versions(path: Path = LOCK) -> dict[str, str]:
    """The pins of `path`, and of the CUDA image's lock where `path` has none."""
    found = {}
    for lock in (CUDA_LOCK, path):
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), flags=re.MULTILINE)
        found.update({canonicalize_name(name): version for name, version in pins})
    return found


def wanted(versions: dict[str, str]) -> dict[str, str]:
    missing = [name for name in CARRY if canonicalize_name(name) not in versions]
    if missing:
        raise SystemExit(f"not in {LOCK.name}: {missing}")
    if both := set(CARRY) & set(SKIPPED):
        raise SystemExit(f"both carried and skipped: {sorted(both)}")
    return {canonicalize_name(name): versions[canonicalize_name(name)] for name in CARRY}


def wheels(dest: Path) -> dict[str, tuple[Version, Path]]:
    found = {}
    for path in sorted(dest.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        found[canonicalize_name(name)] = (version, path)
    return found


def download(pins: dict[str, str], dest: Path, python_version: str) -> None:
    """Fetch what `dest` lacks of `pins`; remove every other wheel there."""
    dest.mkdir(exist_ok=True)
    for name, (version, path) in wheels(dest).items():
        if pins.get(name) is None or Version(pins[name]) != version:
            print(f"removing {path.name}")
            path.unlink()
    have = wheels(dest)
    missing = [f"{name}=={version}" for name, version in pins.items() if name not in have]
    if not missing:
        return
    platforms = [arg for p in PLATFORMS for arg in ("--platform", f"{p}_x86_64")]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "--only-binary=:all:",
         "--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(dest),
         *missing],
        check=True,
    )  # fmt: skip


def requirements(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(whl.read(meta).decode())
    return [Requirement(line) for line in message.get_all("Requires-Dist") or []]


def check(dest: Path, python_version: str) -> list[str]:
    """What a carried wheel needs that neither travels nor is on the machine at a fitting version."""
    env = {"python_version": python_version, "python_full_version": f"{python_version}.3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "os_name": "posix"}  # fmt: skip
    have = wheels(dest)
    problems, assumed = [], set()
    for name, (_, path) in have.items():
        for req in requirements(path):
            extras = {""} | EXTRAS.get(name, set())
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
                continue
            dep = canonicalize_name(req.name)
            if dep in have:
                if not req.specifier.contains(have[dep][0], prereleases=True):
                    problems.append(f"{name} needs {req}, carries {have[dep][0]}")
            elif dep in DEVICE_VERSIONS:
                if not req.specifier.contains(DEVICE_VERSIONS[dep], prereleases=True):
                    problems.append(f"{name} needs {req}, the machine has {DEVICE_VERSIONS[dep]}")
            elif dep in ON_DEVICE:
                if req.specifier:
                    assumed.add(f"{req.name}{req.specifier}")
            else:
                problems.append(f"{name} needs {req}: neither carried nor on the machine")
    if assumed:
        print(f"relied on at the machine's version, not known from here: {', '.join(sorted(assumed))}")
    return problems


def travelling_bytes() -> int:
    """The working tree the tool sends: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    return sum((REPO / p).stat().st_size for p in listed.split("\0") if p and (REPO / p).is_file())


def image(target: Path) -> None:
    """Link this environment's ON_DEVICE installs (package folders, modules, dist-info) into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in ON_DEVICE:
            continue
        site = Path(str(dist.locate_file("")))
        units = set()
        for parts in (Path(str(f)).parts for f in dist.files or []):
            if parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
                continue
            # A namespace package (google/, mpl_toolkits/) is shared: link only this distribution's part.
            shared = len(parts) > 2 and not (site / parts[0] / "__init__.py").exists()
            units.add(Path(*parts[:2]) if shared else Path(parts[0]))
        for unit in sorted(units):
            source, link = site / unit, target / unit
            if source.exists() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dest", type=Path, default=REPO / ".whl", help="where the wheels go")
    parser.add_argument("--python-version", default="3.12", help="the machine's Python")
    parser.add_argument("--limit-mib", type=float, default=56, help="wheels plus working tree, at most")
    parser.add_argument("--image", type=Path, help="instead: link the ON_DEVICE installs here into DIR")
    args = parser.parse_args()
    if args.image:
        image(args.image)
        return
    download(wanted(lock_versions()), args.dest, args.python_version)
    problems = check(args.dest, args.python_version)
    for line in problems:
        print(f"MISSING: {line}")
    have = wheels(args.dest)
    for name, (version, path) in sorted(have.items(), key=lambda item: -item[1][1].stat().st_size):
        print(f"{path.stat().st_size / 2**20:7.2f} MiB  {name}=={version}")
    whl = sum(path.stat().st_size for _, path in have.values()) / 2**20
    tree = travelling_bytes() / 2**20
    print(f"{len(have)} wheels {whl:.1f} MiB + working tree {tree:.1f} MiB = {whl + tree:.1f} MiB "
          f"(limit {args.limit_mib:g} MiB; the tool takes 64 MiB a call)")  # fmt: skip
    if problems or whl + tree > args.limit_mib:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
