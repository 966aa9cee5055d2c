"""The chart and image linters, installed into .tools/bin by `make tools` (.ci/install-tools)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"


def tool(name: str) -> str:
    """The path of one installed tool; a missing tool fails the test (CI must never skip these)."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (.ci/install-tools)")
    return str(path)


def tools_env() -> dict[str, str]:
    """The environment with .tools/bin first on PATH: checkov's helm framework passes silently without helm."""
    return {**os.environ, "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_tool(
    name: str, *args: str, timeout: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(name), *args],
        cwd=cwd,
        env=tools_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
