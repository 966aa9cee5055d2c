"""The chart rendered by real helm, and the parts of it tests look at."""

from __future__ import annotations

import subprocess
from functools import cache
from typing import Any

import yaml

from tests.support.chart_tools import REPO, run_tool

CHART = REPO / "charts" / "qwen-chat"
# The prometheus-operator kinds the chart renders when monitoring is on (no schema in kubernetes-validate).
OPERATOR_API = "monitoring.coreos.com/v1"
NAMESPACE = "chat"


def helm_template(*args: str, kube: str = "1.35.0") -> subprocess.CompletedProcess[str]:
    return run_tool(
        "helm",
        "template",
        "qc",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube,
        "--api-versions",
        OPERATOR_API,
        *args,
    )


@cache
def render(scenario: str | None, *sets: str, kube: str = "1.35.0") -> tuple[dict[str, Any], ...]:
    args = ["-f", str(CHART / "ci" / scenario)] if scenario else []
    for item in sets:
        args += ["--set", item]
    result = helm_template(*args, kube=kube)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, *, hook: bool = False) -> list[dict[str, Any]]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and ("helm.sh/hook" in doc["metadata"].get("annotations", {})) == hook
    ]


def deployment(scenario: str | None, *sets: str) -> dict[str, Any]:
    (found,) = find(render(scenario, *sets), "Deployment")
    return found


def server(scenario: str | None, *sets: str) -> dict[str, Any]:
    (container,) = deployment(scenario, *sets)["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}
