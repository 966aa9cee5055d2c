"""The qwen-chat dashboard: its variables, its rows, and the command that writes it into the chart.

python -m dashboards.qwen_chat          # write charts/qwen-chat/dashboards/qwen-chat.json (make dashboard)
python -m dashboards.qwen_chat --check  # exit 1 if the committed JSON is not what this code writes
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    VariableRefresh,
    VariableSort,
)

from dashboards import health, traffic
from dashboards.panels import DATASOURCE, Panel

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "charts" / "qwen-chat" / "dashboards" / "qwen-chat.json"
RUNBOOK = "https://github.com/qwen-chat/qwen-chat/blob/main/docs/runbook.md"
SCHEMA_VERSION = 39  # Grafana 10.4 and 11; the SDK (10.1) writes 36, which Grafana migrates at each load

ROWS: list[tuple[str, Callable[[], list[Panel]]]] = [
    ("Overview", traffic.overview),
    ("Throughput", traffic.throughput),
    ("Load", traffic.load),
    ("Latency", traffic.latency),
    ("Errors and refusals", health.errors_and_refusals),
    ("Model and workers", health.model_and_workers),
    ("Engine", health.engine),
]


def label_values(name: str, label: str, selector: str, *, multi: bool) -> dashboard.QueryVariable:
    """A variable listing the values of `label` on qwen_chat_model_loaded, narrowed by `selector`;
    `multi` ones may select several values or All (`.*`)."""
    query = f"label_values(qwen_chat_model_loaded{selector}, {label})"
    variable = (
        dashboard.QueryVariable(name)
        .id(name)
        .label(name.capitalize())
        .datasource(DATASOURCE)
        .query({"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .regex("")
        .multi(multi)
        .include_all(multi)
    )
    return variable.all_value(".*") if multi else variable


def qwen_chat() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("qwen-chat")
        .uid("qwen-chat")
        .description(
            "qwen-chat: throughput, latency, load, errors and model state of the chat service, "
            "from its own /metrics (prefix qwen_chat_)."
        )
        .tags(["qwen-chat", "llm"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .timezone("")
        .week_start("")
        .refresh("30s")
        .version(1)
        .annotations([])  # Grafana adds its built-in "Annotations & Alerts"
        .link(
            dashboard.DashboardLink("Runbook")
            .type(DashboardLinkType.LINK)
            .url(RUNBOOK)
            .target_blank(True)
            .icon("doc")
            .tooltip("What each qwen-chat alert means and what to do")
            .tags([])
        )
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .id("datasource")
            .label("Data source")
            .type("prometheus")
        )
        .with_variable(label_values("namespace", "namespace", "", multi=False))
        .with_variable(label_values("pod", "pod", '{namespace=~"$namespace"}', multi=True))
        .with_variable(label_values("model", "model", '{namespace=~"$namespace", pod=~"$pod"}', multi=True))
    )
    ids = itertools.count(1)
    for title, panels in ROWS:
        board.with_row(dashboard.Row(title).id(next(ids)))  # the SDK lays panels out after it, left to right
        for panel in panels():
            board.with_panel(panel.id(next(ids)))
    return board


def render() -> str:
    """The dashboard as the chart ships it: sorted keys, two-space indents, a final newline."""
    model = qwen_chat().build()
    model.schema_version = SCHEMA_VERSION
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the qwen-chat Grafana dashboard into the chart.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs; write nothing")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="the JSON file (default: the chart's)")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        args.out.write_text(text)
        return 0
    current = args.out.read_text() if args.out.exists() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(), text.splitlines(), str(args.out), "generated", n=1, lineterm=""
    )
    shown = args.out.resolve().relative_to(REPO) if args.out.resolve().is_relative_to(REPO) else args.out
    print(
        f"{shown} is not what dashboards/qwen_chat.py generates: run `make dashboard` and commit it.",
        *list(diff)[:40],
        sep="\n",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
