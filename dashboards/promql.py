"""The PromQL shapes the panels repeat, each filtered by the dashboard's variables."""

from __future__ import annotations

RATE_INTERVAL = "$__rate_interval"


def series(metric: str, *matchers: str, model: bool = True) -> str:
    """`qwen_chat_<metric>{...}` of the selected namespace and pods (and models, for a metric with the
    `model` label), narrowed by `matchers` such as `outcome="error"`."""
    labels = ['namespace=~"$namespace"', 'pod=~"$pod"']
    if model:
        labels.append('model=~"$model"')
    return f"qwen_chat_{metric}{{{', '.join([*labels, *matchers])}}}"


def rate(metric: str, *matchers: str, model: bool = True, function: str = "rate") -> str:
    """`rate(...)` (or `increase(...)`) of a counter over Grafana's `$__rate_interval`."""
    return f"{function}({series(metric, *matchers, model=model)}[{RATE_INTERVAL}])"


def sum_by(labels: tuple[str, ...], expr: str) -> str:
    """`sum by (labels) (expr)`, or a plain `sum(expr)` without labels."""
    return f"sum by ({', '.join(labels)}) ({expr})" if labels else f"sum({expr})"


def quantile(q: float, histogram: str) -> str:
    """The q-quantile of a histogram over all selected series."""
    return f"histogram_quantile({q:g}, sum by (le) ({rate(histogram + '_bucket')}))"


def mean_by_pod(histogram: str) -> str:
    """A histogram's mean observation per pod over the rate interval."""
    return f"{sum_by(('pod',), rate(histogram + '_sum'))} / {sum_by(('pod',), rate(histogram + '_count'))}"


def request_ratio(part: str, whole: tuple[str, ...] = ()) -> str:
    """Share of the requests (requests_total) matching `part` among those matching `whole`: 0 when none
    match `part`, no data when none match `whole`."""
    matching = sum_by((), rate("requests_total", part))
    among = sum_by((), rate("requests_total", *whole))
    return f"({matching} or vector(0)) / ({among} > 0)"
