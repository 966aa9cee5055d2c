"""Panel factories: a stat, a time series and their targets, with the dashboard's common settings.

Every panel reads the `$datasource` variable, has a description, a unit and thresholds that start with a
base step; ref ids are A, B, C... in the order of the targets.
"""

from __future__ import annotations

from string import ascii_uppercase
from typing import TypeVar

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DynamicConfigValue,
    FieldColorModeId,
    Threshold,
    ThresholdsMode,
)
from grafana_foundation_sdk.models.prometheus import QueryEditorMode

from dashboards.promql import quantile, rate, sum_by

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
Panel = stat.Panel | timeseries.Panel
TOKENS_PER_SECOND = "suffix: tok/s"


def target(expr: str, legend: str) -> prometheus.Dataquery:
    """One Prometheus query of a panel, its series named by `legend` (`{{label}}` for a label's value)."""
    return (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .expr(expr)
        .legend_format(legend)
        .range()
        .editor_mode(QueryEditorMode.CODE)
    )


def rate_by(
    metric: str, *labels: str, matchers: tuple[str, ...] = (), model: bool = True
) -> prometheus.Dataquery:
    """Per second of a counter, one series per value of `labels` (legend `{{label}} ...`)."""
    legend = " ".join(f"{{{{{label}}}}}" for label in labels)
    return target(sum_by(labels, rate(metric, *matchers, model=model)), legend)


def increase_by_pod(counter: str, legend: str, *, model: bool = True) -> prometheus.Dataquery:
    """How much a counter rose per pod over the rate interval: a count of events, not a rate."""
    return target(sum_by(("pod",), rate(counter, model=model, function="increase")), legend)


def percentiles(histogram: str, *quantiles: float, name: str = "") -> list[prometheus.Dataquery]:
    """The `quantiles` of a histogram (default p50 and p95), legends `p50`... after an optional `name`."""
    prefix = f"{name} " if name else ""
    return [target(quantile(q, histogram), f"{prefix}p{q * 100:g}") for q in quantiles or (0.5, 0.95)]


def steps(base: str, *above: tuple[float, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: the `base` colour, then each (value, colour) from that value up."""
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color=base), *(Threshold(value=v, color=c) for v, c in above)])
    )


P = TypeVar("P", stat.Panel, timeseries.Panel)


def _with_targets(panel: P, targets: list[prometheus.Dataquery]) -> P:
    for ref, query in zip(ascii_uppercase, targets, strict=False):
        panel.with_target(query.ref_id(ref))
    return panel


def stat_panel(
    title: str,
    description: str,
    query: str,
    *,
    unit: str,
    thresholds: dashboard.ThresholdsConfig | None = None,
    decimals: int | None = None,
) -> stat.Panel:
    """A 4 x 4 stat: the last value of one query, its legend the title, coloured by the thresholds."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(4)
        .height(4)
        .unit(unit)
        .color_scheme(dashboard.FieldColor().mode(FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds or steps("green"))
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(common_models.BigValueColorMode.VALUE)
        .graph_mode(common_models.BigValueGraphMode.AREA)
    )
    if decimals is not None:
        panel.decimals(decimals)
    return _with_targets(panel, [target(query, title)])


def timeseries_panel(
    title: str,
    description: str,
    targets: list[prometheus.Dataquery],
    *,
    unit: str,
    width: int = 8,
    thresholds: dashboard.ThresholdsConfig | None = None,
    dashed: bool = False,
    bars: bool = False,
    decimals: int | None = None,
    max_value: float | None = None,
) -> timeseries.Panel:
    """An 8-high time series from 0 up; `dashed` draws the thresholds as lines, `bars` draws bars."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .unit(unit)
        .min(0)
        .color_scheme(dashboard.FieldColor().mode(FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(thresholds or steps("green"))
        .draw_style(common_models.GraphDrawStyle.BARS if bars else common_models.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(80 if bars else 10)
        .show_points(common_models.VisibilityMode.NEVER)
        .span_nulls(False)
        .axis_soft_min(0)
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(
                common_models.GraphTresholdsStyleMode.DASHED
                if dashed
                else common_models.GraphTresholdsStyleMode.OFF
            )
        )
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )
    if decimals is not None:
        panel.decimals(decimals)
    if max_value is not None:
        panel.max(max_value)
    return _with_targets(panel, targets)


def on_right_axis(panel: timeseries.Panel, series: str, unit: str) -> timeseries.Panel:
    """Draw one series of the panel (by its legend) on a right-hand axis of its own unit, without the max."""
    return panel.override_by_name(
        series,
        [
            DynamicConfigValue(id_val="unit", value=unit),
            DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            DynamicConfigValue(id_val="max"),
        ],
    )
