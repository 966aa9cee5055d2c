"""Draw the Grafana dashboard's panels into one PNG from a live Prometheus, without a Grafana server.

Every panel target of the dashboard JSON is sent to Prometheus's /api/v1/query_range with the Grafana
variables substituted, and drawn where Grafana would draw it (the panels' gridPos): time series as lines or
bars with their unit, thresholds and legend, stat panels as one big number.

    .venv/bin/python docs/dashboard_preview.py --prometheus http://127.0.0.1:9090 \\
        --dashboard charts/qwen-chat/dashboards/qwen-chat.json --out docs/dashboard.png \\
        --var namespace=llm --var pod=chat-qwen-chat-7d9c8b6f5-x2x9z --minutes 15

Variables not given with --var take Grafana's "All" value (`.*`). Exit status 1 when `--require-data` is given
and some panel target returned no series.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

# Grafana's dark theme.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d"]
NAMED_COLORS = {
    "green": "#73bf69",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "red": "#f2495c",
    "blue": "#5794f2",
    "purple": "#b877d9",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class Series:
    legend: str
    times: list[float]  # Unix time
    values: list[float]


@dataclass
class Panel:
    spec: dict[str, Any]
    series: list[Series] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # refIds that returned no series

    @property
    def title(self) -> str:
        return str(self.spec.get("title", ""))

    @property
    def defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = self.spec.get("fieldConfig", {}).get("defaults", {})
        return defaults

    def right_axis(self) -> dict[str, str]:
        """Series (by legend) that a byName override puts on a right-hand axis, with their unit."""
        found = {}
        for override in self.spec.get("fieldConfig", {}).get("overrides", []):
            properties = {p["id"]: p.get("value") for p in override.get("properties", [])}
            if override["matcher"]["id"] == "byName" and properties.get("custom.axisPlacement") == "right":
                found[override["matcher"]["options"]] = properties.get("unit") or "short"
        return found


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows flattened in."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace `$name`, `${name}` and `[[name]]` by the variable's value; unknown names are left alone."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(replace, expr)


def dashboard_variables(
    dashboard: dict[str, Any], given: dict[str, str], rate_interval: str
) -> dict[str, str]:
    """Values for the dashboard's template variables: given ones, else the variable's "All" value."""
    values = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": rate_interval}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if name in given:
            values[name] = given[name]
        elif variable.get("type") == "query":
            values[name] = variable.get("allValue") or ".*"
    values.update(given)
    return values


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{{{inner}}}" if inner else labels.get("__name__", "value")
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt)


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}", timeout=30) as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def fetch(
    prometheus: str,
    dashboard: dict[str, Any],
    variables: dict[str, str],
    start: float,
    end: float,
    step: float,
) -> list[Panel]:
    panels = []
    for spec in panels_of(dashboard):
        panel = Panel(spec)
        for target in spec.get("targets", []):
            expr = substitute(target["expr"], variables)
            result = query_range(prometheus, expr, start, end, step)
            if not result:
                panel.missing.append(target.get("refId", "?"))
            for item in result:
                points = [(float(t), float(v)) for t, v in item["values"]]
                panel.series.append(
                    Series(
                        legend(target.get("legendFormat", ""), item["metric"]),
                        [t for t, _ in points],
                        [v for _, v in points],
                    )
                )
        panels.append(panel)
    return panels


def _si(value: float, decimals: int | None) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{1 if decimals is None else decimals}f}{prefix}"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana shows it for the units the dashboard uses."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if unit == "s":
        magnitude = abs(value)
        if magnitude == 0:
            return "0 s"
        if magnitude < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if magnitude < 1:
            return f"{value * 1e3:.3g} ms"
        if magnitude < 60:
            return f"{value:.3g} s"
        if magnitude < 3600:
            return f"{value / 60:.3g} min"
        return f"{value / 3600:.3g} h"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "percent":
        return f"{value:.{1 if decimals is None else decimals}f}%"
    if unit == "reqps":
        return f"{_si(value, decimals)} req/s"
    if unit.startswith("suffix:"):
        return _si(value, decimals) + unit.removeprefix("suffix:")
    return _si(value, decimals)


def threshold_steps(panel: Panel) -> list[tuple[float, str]]:
    steps = panel.defaults.get("thresholds", {}).get("steps", [])
    return [
        (
            -math.inf if step.get("value") is None else float(step["value"]),
            NAMED_COLORS.get(step["color"], step["color"]),
        )
        for step in steps
    ]


def threshold_color(panel: Panel, value: float) -> str:
    color = NAMED_COLORS["green"]
    for bound, step_color in threshold_steps(panel):
        if value >= bound:
            color = step_color
    return color


def _style(ax: Axes) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    ax.tick_params(colors=MUTED, labelsize=7, length=2)


def draw_stat(ax: Axes, panel: Panel) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    unit = panel.defaults.get("unit", "short")
    finite = [(s, [v for v in s.values if math.isfinite(v)]) for s in panel.series]
    finite = [(s, values) for s, values in finite if values]
    if not finite:
        ax.text(
            0.5, 0.42, "No data", color=MUTED, ha="center", va="center", fontsize=14, transform=ax.transAxes
        )
        return
    series, values = finite[0]
    last = values[-1]
    color = threshold_color(panel, last)
    spark = ax.inset_axes((0.0, 0.0, 1.0, 0.45))
    spark.fill_between(
        series.times, [v if math.isfinite(v) else 0 for v in series.values], color=color, alpha=0.18
    )
    spark.set_axis_off()
    spark.set_ylim(bottom=0)
    text = format_value(last, unit, panel.defaults.get("decimals"))
    ax.text(
        0.5,
        0.45,
        text,
        color=color,
        ha="center",
        va="center",
        fontsize=22,
        weight="bold",
        transform=ax.transAxes,
    )


def _clock(value: float, _position: float) -> str:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%H:%M:%S")


def _right_axis(ax: Axes, right: dict[str, str], series: list[Series]) -> Axes | None:
    """A second y axis on the right for the series an override moves there (one unit: the first's)."""
    units = [right[s.legend] for s in series if s.legend in right]
    if not units:
        return None
    twin = ax.twinx()
    _style(twin)
    twin.set_facecolor("none")
    twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, units[0])))
    twin.yaxis.set_major_locator(MaxNLocator(4))
    return twin


def draw_timeseries(ax: Axes, panel: Panel, start: float, end: float, step: float) -> None:
    unit = panel.defaults.get("unit", "short")
    custom = panel.defaults.get("custom", {})
    bars = custom.get("drawStyle") == "bars"
    ax.grid(True, color=BORDER, linewidth=0.5)
    ax.set_xlim(start, end)
    ax.xaxis.set_major_formatter(FuncFormatter(_clock))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    if not panel.series:
        ax.text(
            0.5, 0.5, "No data", color=MUTED, ha="center", va="center", fontsize=12, transform=ax.transAxes
        )
    right = panel.right_axis()
    twin = _right_axis(ax, right, panel.series)
    for index, series in enumerate(panel.series):
        color = PALETTE[index % len(PALETTE)]
        target = twin if twin is not None and series.legend in right else ax
        if bars:
            target.bar(
                series.times, series.values, width=step * 0.8, color=color, alpha=0.85, label=series.legend
            )
        else:
            target.plot(series.times, series.values, color=color, linewidth=1.2, label=series.legend)
            target.fill_between(series.times, series.values, color=color, alpha=0.08)
    if "min" in panel.defaults:
        ax.set_ylim(bottom=panel.defaults["min"])
    if twin is not None:
        twin.set_ylim(bottom=0)  # after plotting: set_ylim stops autoscaling
    left = [s for s in panel.series if s.legend not in right]
    top = max((v for s in left for v in s.values if math.isfinite(v)), default=0.0)
    if top <= 0:
        ax.set_ylim(top=1)
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        for bound, color in threshold_steps(panel):
            if math.isfinite(bound):
                ax.axhline(bound, color=color, linestyle="--", linewidth=0.8, alpha=0.8)
        if top > 0:
            ax.set_ylim(top=max(top * 1.1, ax.get_ylim()[1]))
    if panel.series:
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ncol = min(3, len(panel.series))
        on_top = twin if twin is not None else ax  # so that no line of the other axis covers it
        legend = on_top.legend(handles, labels, loc="upper left", fontsize=6, ncol=ncol, labelcolor=TEXT)
        legend.get_frame().set(facecolor=PANEL, edgecolor=PANEL, alpha=0.85)
        legend.set_zorder(5)


def draw(
    panels: list[Panel], dashboard: dict[str, Any], subtitle: str, start: float, end: float, step: float
) -> Figure:
    width_in = 22.0
    column = width_in / 24
    unit_h = 0.42
    bottom = max(p.spec["gridPos"]["y"] + p.spec["gridPos"]["h"] for p in panels)
    header = 0.7
    height_in = bottom * unit_h + header
    figure = plt.figure(figsize=(width_in, height_in), facecolor=BACKGROUND)
    figure.text(
        0.006, 1 - 0.28 / height_in, dashboard.get("title", ""), color=TEXT, fontsize=15, weight="bold"
    )
    figure.text(0.006, 1 - 0.55 / height_in, subtitle, color=MUTED, fontsize=8.5)
    pad = 0.05
    for panel in panels:
        pos = panel.spec["gridPos"]
        left = (pos["x"] * column + pad) / width_in
        top = 1 - (header + pos["y"] * unit_h + pad) / height_in
        if panel.spec.get("type") == "row":
            figure.text(left, top - 0.3 / height_in, panel.title, color=TEXT, fontsize=11, weight="bold")
            continue
        title_h = 0.28
        w = (pos["w"] * column - 2 * pad) / width_in
        h = (pos["h"] * unit_h - 2 * pad - title_h) / height_in
        box = figure.add_axes((left, top - h - title_h / height_in, w, h + title_h / height_in))
        box.set_facecolor(PANEL)
        box.set_xticks([])
        box.set_yticks([])
        for spine in box.spines.values():
            spine.set_color(BORDER)
        box.text(
            0.01,
            1 - 0.06 / (h * height_in + title_h),
            panel.title,
            color=TEXT,
            fontsize=8.5,
            weight="bold",
            va="top",
            transform=box.transAxes,
        )
        if panel.spec.get("type") == "stat":
            ax = figure.add_axes((left, top - h - title_h / height_in, w, h))
            _style(ax)
            ax.set_frame_on(False)
            draw_stat(ax, panel)
        else:
            inset_l = 0.62 / width_in
            inset_r = (0.62 if panel.right_axis() else 0.1) / width_in
            inset_b = 0.3 / height_in
            ax = figure.add_axes(
                (
                    left + inset_l,
                    top - h - title_h / height_in + inset_b,
                    w - inset_l - inset_r,
                    h - inset_b - 0.05 / height_in,
                )
            )
            _style(ax)
            ax.set_facecolor("none")
            draw_timeseries(ax, panel, start, end, step)
    return figure


def shrink(path: Path, colors: int) -> None:
    """Re-save the PNG with a palette of `colors` colours: a fraction of the size, no visible loss."""
    from PIL import Image

    with Image.open(path) as image:
        paletted = image.convert("RGB").quantize(colors, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    paletted.save(path, optimize=True)


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 1m)")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * factor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--dashboard", type=Path, default=Path("charts/qwen-chat/dashboards/qwen-chat.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE", help="a dashboard variable"
    )
    parser.add_argument("--minutes", type=float, default=15, help="time range: the last N minutes")
    parser.add_argument("--end", type=float, default=None, help="end of the range (Unix time; default now)")
    parser.add_argument("--step", type=float, default=None, help="query resolution in seconds")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for")
    parser.add_argument(
        "--require-data", action="store_true", help="exit 1 if a panel target returns nothing"
    )
    parser.add_argument("--dpi", type=int, default=90)
    parser.add_argument(
        "--colors", type=int, default=128, help="palette size of the PNG; 0 keeps full colour"
    )
    args = parser.parse_args(argv)
    parse_duration(args.rate_interval)
    given = dict(item.split("=", 1) for item in args.var)
    dashboard = json.loads(args.dashboard.read_text())
    end = args.end if args.end is not None else time.time()
    start = end - args.minutes * 60
    step = args.step or max(1.0, round(args.minutes * 60 / 300))
    variables = dashboard_variables(dashboard, given, args.rate_interval)
    panels = fetch(args.prometheus, dashboard, variables, start, end, step)
    shown = ", ".join(f"{k}={v}" for k, v in given.items())
    when = dt.datetime.fromtimestamp(end, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    subtitle = f"last {args.minutes:g} min to {when}   {shown}   preview drawn by docs/dashboard_preview.py"
    figure = draw(panels, dashboard, subtitle, start, end, step)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=args.dpi, facecolor=BACKGROUND)
    plt.close(figure)
    if args.colors:
        shrink(args.out, args.colors)
    empty = [f"{p.title} ({', '.join(p.missing)})" for p in panels if p.missing]
    drawn = [p for p in panels if p.spec.get("type") != "row"]
    targets = sum(len(p.spec.get("targets", [])) for p in drawn)
    print(f"{args.out}: {len(drawn)} panels, {targets} targets, {len(empty)} with no data", file=sys.stderr)
    for title in empty:
        print(f"  no data: {title}", file=sys.stderr)
    return 1 if args.require_data and empty else 0


if __name__ == "__main__":
    sys.exit(main())
