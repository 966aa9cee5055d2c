"""The Grafana dashboard and the alert rules shipped in the chart, proven against the real service.

A real Prometheus scrapes a real `qwen-chat serve` under a mixed load, and every panel query of the
dashboard must return data; the alert rules pass `promtool check rules` and `promtool test rules`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_chat.metrics import OUTCOMES, REFUSAL_REASONS, Transport
from tests.support.chart_tools import REPO, run_tool
from tests.support.live_server import wait_until
from tests.support.monitoring_stack import (
    DASHBOARD,
    JOB,
    MODEL,
    NAMESPACE,
    POD,
    RELEASE,
    SERVE_SETTINGS,
    LoadResult,
    Users,
    credentials,
    dashboard,
    finite,
    grafana_variables,
    kill_a_worker,
    load_round,
    panels,
    prometheus,
    run_preview,
    substitute,
    targets,
    variable_query,
)
from tests.support.serve_process import serve_process

RUNBOOK = REPO / "docs" / "runbook.md"
CHART = REPO / "charts" / "qwen-chat"
TEST_OUTPUT = REPO / "test-output"

METRICS_WITH_MODEL = {
    "generation_tokens_total",
    "prompt_tokens_total",
    "generation_tokens_per_second",
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "request_duration_seconds",
    "request_queue_seconds",
    "requests_running",
    "requests_waiting",
    "requests_total",
    "refusals_total",
    "model_loaded",
    "model_load_seconds",
    "kv_cache_usage_ratio",
    "kv_cache_pages",
    "kv_cache_page_size_tokens",
    "engine_step_seconds",
    "engine_batch_size",
    "engine_preemptions_total",
    "engine_restarts_total",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
    "kept_conversation_states",
}
METRICS_WITHOUT_MODEL = {
    "active_connections",
    "client_disconnects_total",
    "auth_failures_total",
    "worker_exits_total",
}
REQUIRED_PANELS = {
    "Generated tokens per second",
    "Per-request decode speed",
    "Active WebSocket connections",
    "Requests running and waiting",
    "Time to first token",
    "Inter-token latency",
    "Request rate by transport and outcome",
    "Rate-limited requests",
    "Refusals by reason",
    "Per-user caps",
    "Authentication failures",
    "Model loaded per pod",
    "Model load time",
    "Worker restarts",
}
ALERTS = {
    "QwenChatNoReadyReplica",
    "QwenChatTimeToFirstTokenHigh",
    "QwenChatQueueSaturated",
    "QwenChatErrorRatioHigh",
    "QwenChatModelNotLoaded",
    "QwenChatWorkersRestarting",
    "QwenChatPodCrashLooping",
}
# Values that differ from the defaults, so the tests show that the rules follow them.
RULE_VALUES: dict[str, Any] = {
    "server.workers": 2,
    "server.maxWaiting": 10,  # per worker: the pod's bound is 20
    "model.loadTimeoutSeconds": 600,
    "monitoring.prometheusRule.ttftP95Seconds": 1.5,
    "monitoring.prometheusRule.runbookUrl": "https://example.com/runbook.md",
}


def helm_template(show_only: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """One template of the chart, rendered with these values (--set-json: numbers stay numbers)."""
    values = {"auth.existingSecret": "qwen-chat-keys", **values}
    sets = [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]
    done = run_tool(
        "helm", "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *sets, "--show-only", show_only
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def rendered_rules(values: dict[str, Any] | None = None) -> dict[str, Any]:
    docs = helm_template(
        "templates/prometheusrule.yaml", {"monitoring.prometheusRule.enabled": True, **(values or {})}
    )
    assert len(docs) == 1
    return docs[0]


def alerting_rules(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool comes with Debian's prometheus package (make system-deps)"
    return path


# ---------------------------------------------------------------- the dashboard, statically


def selectors(expr: str) -> list[tuple[str, str]]:
    """Each `qwen_chat_<name>{...}` of an expression as (the histogram's or metric's name without prefix,
    matchers): `_bucket`, `_sum` and `_count` are series of one histogram."""
    bare = re.findall(r"qwen_chat_\w+(?![\w{])", expr)
    assert not bare, f"a metric without a selector: {bare} in {expr}"
    return [
        (re.sub(r"_(bucket|sum|count)$", "", name), matchers)
        for name, matchers in re.findall(r"qwen_chat_(\w+)\{([^}]*)\}", expr)
    ]


def test_dashboard_has_the_variables_panels_units_thresholds_and_filters() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] == "qwen-chat" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "pod", "model"}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("namespace", "pod", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        _, label = variable_query(variables[name])
        assert label == name
    assert variable_query(variables["pod"])[0] == 'qwen_chat_model_loaded{namespace=~"$namespace"}'

    all_panels = panels(board)
    titles = [p["title"] for p in all_panels]
    assert set(titles) >= REQUIRED_PANELS, REQUIRED_PANELS - set(titles)
    assert len(set(titles)) == len(titles), "panel titles are unique"
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    used: set[str] = set()
    cells: set[tuple[int, int]] = set()
    for panel in all_panels:
        title = panel["title"]
        assert len(panel.get("description", "")) > 40, f"{title}: describe the panel"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{title}: no unit"
        steps = defaults["thresholds"]["steps"]
        assert steps and steps[0]["value"] is None, f"{title}: thresholds start with a base step"
        assert [s["value"] for s in steps[1:]] == sorted(s["value"] for s in steps[1:]), title
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, title
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not mine & cells, f"{title} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), title
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}", title
            for window in re.findall(r"(?:rate|increase)\([^\[]*\[([^\]]*)\]", expr):
                assert window == "$__rate_interval", f"{title}: {expr}"
            found = selectors(expr)
            assert found, f"{title}: {expr}"
            for name, matchers in found:
                used.add(name)
                assert 'namespace=~"$namespace"' in matchers and 'pod=~"$pod"' in matchers, f"{title}: {expr}"
                if name in METRICS_WITH_MODEL:
                    assert 'model=~"$model"' in matchers, f"{title}: {name} has a model label: {expr}"
                else:
                    assert name in METRICS_WITHOUT_MODEL, f"{title}: unknown metric qwen_chat_{name}"
                    assert "$model" not in matchers, f"{title}: {name} has no model label"
    assert used == METRICS_WITH_MODEL | METRICS_WITHOUT_MODEL, (
        "every metric of the contract is on the dashboard"
    )


def _generator(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dashboards.qwen_chat", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def test_committed_dashboard_is_what_dashboards_qwen_chat_generates(tmp_path: Path) -> None:
    """The JSON in the chart is an output: `make dashboard` writes it from dashboards/, and --check fails on
    any drift (shown here on a tampered copy)."""
    done = _generator("--check")
    assert done.returncode == 0, done.stdout + done.stderr
    committed = DASHBOARD.read_text()
    tampered = tmp_path / "qwen-chat.json"
    tampered.write_text(committed.replace('"title": "Ready pods"', '"title": "Edited by hand"'))
    assert tampered.read_text() != committed
    done = _generator("--check", "--out", str(tampered))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "run `make dashboard`" in done.stderr and '"Edited by hand"' in done.stderr, done.stderr
    assert _generator("--out", str(tampered)).returncode == 0
    assert tampered.read_text() == committed, "the generator writes what is committed"


def test_chart_ships_the_dashboard_as_a_configmap_for_the_grafana_sidecar() -> None:
    values = {
        "monitoring.dashboard.enabled": True,
        "monitoring.dashboard.folder": "LLM serving",
        "monitoring.dashboard.labels.team": "ml",
    }
    (configmap,) = helm_template("templates/dashboard-configmap.yaml", values)
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["name"] == JOB + "-dashboard"
    labels = configmap["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["team"] == "ml"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM serving"}
    assert json.loads(configmap["data"]["qwen-chat.json"]) == json.loads(DASHBOARD.read_text())
    # Off by default: nothing renders.
    done = run_tool(
        "helm", "template", RELEASE, str(CHART), "--set", "auth.existingSecret=k",
        "--show-only", "templates/dashboard-configmap.yaml",
    )  # fmt: skip
    assert done.returncode != 0 and "could not find template" in done.stderr


# ---------------------------------------------------------------- the alert rules


def test_prometheus_rule_is_scoped_to_the_release_and_follows_the_values() -> None:
    rule = rendered_rules(RULE_VALUES)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    alerts = alerting_rules(rule)
    assert set(alerts) == ALERTS
    runbook = RUNBOOK.read_text()
    for name, alert in alerts.items():
        annotations = alert["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 60, name
        url = annotations["runbook_url"]
        assert url == f"https://example.com/runbook.md#{name.lower()}", name
        assert f'<a id="{name.lower()}"></a>' in runbook and f"\n## {name}\n" in runbook, name
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        for matchers in re.findall(r"qwen_chat_\w+\{([^}]*)\}", alert["expr"]):
            assert f'namespace="{NAMESPACE}"' in matchers and f'job="{JOB}"' in matchers, (
                name,
                alert["expr"],
            )
    assert alerts["QwenChatTimeToFirstTokenHigh"]["expr"].endswith("> 1.5")
    assert re.search(r"\) / 20 > 0\.8$", alerts["QwenChatQueueSaturated"]["expr"]), "maxWaiting x workers"
    assert alerts["QwenChatModelNotLoaded"]["for"] == "600s"
    labels = rendered_rules({"monitoring.prometheusRule.labels.release": "kube-prometheus-stack"})["metadata"]
    assert labels["labels"]["release"] == "kube-prometheus-stack"
    done = run_tool(
        "helm",
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "auth.existingSecret=k",
        "--show-only",
        "templates/prometheusrule.yaml",
    )
    assert done.returncode != 0 and "could not find template" in done.stderr, "off by default"


def test_runbook_documents_every_alert() -> None:
    text = RUNBOOK.read_text()
    sections = re.split(r"\n## ", text)
    for name in ALERTS:
        (section,) = [s for s in sections if s.startswith(name + "\n")]
        for part in ("**Check**", "**Do**", "kubectl"):
            assert part in section, f"{name}: the runbook section needs {part}"
    assert "kube-state-metrics" in text and "qwen_chat_worker_exits_total" in text


def _expand(template: str, labels: dict[str, str], value: str) -> str:
    """Prometheus's annotation templating for the forms the rules use; anything else fails the test."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    text = re.sub(r"\{\{ \$value(?: \| (humanize|humanizePercentage|humanizeDuration))? \}\}", value, text)
    assert "{{" not in text, f"the test cannot expand: {template}"
    return text


S = f'namespace="{NAMESPACE}", job="{JOB}"'


def _alert(rules: dict[str, dict[str, Any]], name: str, value: str = "", **labels: str) -> dict[str, Any]:
    """An expected alert: its labels and its annotations as Prometheus expands them."""
    rule = rules[name]
    all_labels = {**labels, **rule.get("labels", {})}
    annotations = {k: _expand(v, labels, value) for k, v in rule["annotations"].items()}
    return {"exp_labels": all_labels, "exp_annotations": annotations}


def _promtool_tests(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic series that make each alert fire, and others (wrong namespace, below the bound, too short) that must not."""
    pod = {"namespace": NAMESPACE, "pod": "p-a"}
    loaded = "qwen_chat_model_loaded{" + S + ', model="m"'
    ttft = "qwen_chat_time_to_first_token_seconds_bucket{" + S + ', pod="p-a", model="m"'
    requests = "qwen_chat_requests_total{" + S + ', pod="p-a", model="m", transport="ws"'
    restarts = 'kube_pod_container_status_restarts_total{job="kube-state-metrics", container="server"'
    return [
        {  # half of a pod's workers loaded, another namespace fully loaded: no ready replica
            "interval": "1m",
            "input_series": [
                {"series": loaded + ', pod="p-a", pid="11"}', "values": "1x20"},
                {"series": loaded + ', pod="p-a", pid="12"}', "values": "0x20"},
                {
                    "series": 'qwen_chat_model_loaded{namespace="other", job="'
                    + JOB
                    + '", pod="p-x", pid="1", model="m"}',
                    "values": "1x20",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "QwenChatNoReadyReplica", "exp_alerts": []},
                {
                    "eval_time": "6m",
                    "alertname": "QwenChatNoReadyReplica",
                    "exp_alerts": [_alert(rules, "QwenChatNoReadyReplica")],
                },
            ],
        },
        {  # nothing scraped at all
            "interval": "1m",
            "input_series": [{"series": 'up{job="something-else"}', "values": "1x20"}],
            "alert_rule_test": [
                {
                    "eval_time": "6m",
                    "alertname": "QwenChatNoReadyReplica",
                    "exp_alerts": [_alert(rules, "QwenChatNoReadyReplica")],
                },
            ],
        },
        {  # one pod becomes ready after 2 minutes, another never does: quiet; p95 below the bound: quiet
            "interval": "1m",
            "input_series": [
                {"series": loaded + ', pod="p-a", pid="11"}', "values": "1x20"},
                {"series": loaded + ', pod="p-a", pid="12"}', "values": "0 0 1x18"},
                {"series": loaded + ', pod="p-b", pid="21"}', "values": "0x20"},
                {"series": ttft + ', le="0.5"}', "values": "0x20"},
                {"series": ttft + ', le="1"}', "values": "0+100x20"},
                {"series": ttft + ', le="+Inf"}', "values": "0+100x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "QwenChatNoReadyReplica", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "QwenChatTimeToFirstTokenHigh", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "QwenChatModelNotLoaded",
                    "exp_alerts": [
                        _alert(rules, "QwenChatModelNotLoaded", **pod | {"pod": "p-b"}),
                    ],
                },
            ],
        },
        {  # p95 of time to first token 1.75 s (90% in (0.5, 1], 10% in (1, 2.5]): above the 1.5 s bound
            "interval": "1m",
            "input_series": [
                {"series": ttft + ', le="0.5"}', "values": "0x30"},
                {"series": ttft + ', le="1"}', "values": "0+90x30"},
                {"series": ttft + ', le="2.5"}', "values": "0+100x30"},
                {"series": ttft + ', le="+Inf"}', "values": "0+100x30"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "QwenChatTimeToFirstTokenHigh",
                    "exp_alerts": [],
                },  # for 10m
                {
                    "eval_time": "12m",
                    "alertname": "QwenChatTimeToFirstTokenHigh",
                    "exp_alerts": [
                        _alert(rules, "QwenChatTimeToFirstTokenHigh", "1.75s", model="m"),
                    ],
                },
            ],
        },
        {  # queue bound 10 per worker x 2 workers = 20: 18 waiting fires, 15 does not, another namespace does not
            "interval": "1m",
            "input_series": [
                {"series": "qwen_chat_requests_waiting{" + S + ', pod="p-a", model="m"}', "values": "18x20"},
                {"series": "qwen_chat_requests_waiting{" + S + ', pod="p-b", model="m"}', "values": "15x20"},
                {
                    "series": 'qwen_chat_requests_waiting{namespace="other", job="'
                    + JOB
                    + '", pod="p-c", model="m"}',
                    "values": "30x20",
                },
                {
                    "series": "qwen_chat_requests_waiting{" + S + ', pod="p-d", model="m"}',
                    "values": "20x3 0x17",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "QwenChatQueueSaturated", "exp_alerts": []},  # for 5m
                {
                    "eval_time": "6m",
                    "alertname": "QwenChatQueueSaturated",
                    "exp_alerts": [
                        _alert(rules, "QwenChatQueueSaturated", "90%", **pod),
                    ],
                },
            ],
        },
        {  # 1 error in 10 admitted requests; a flood of rate-limited requests does not dilute it
            "interval": "1m",
            "input_series": [
                {"series": requests + ', outcome="error"}', "values": "0+1x30"},
                {"series": requests + ', outcome="stop"}', "values": "0+9x30"},
                {"series": requests + ', outcome="rate_limited"}', "values": "0+500x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "QwenChatErrorRatioHigh", "exp_alerts": []},  # for 5m
                {
                    "eval_time": "12m",
                    "alertname": "QwenChatErrorRatioHigh",
                    "exp_alerts": [
                        _alert(rules, "QwenChatErrorRatioHigh", "10%"),
                    ],
                },
            ],
        },
        {  # 1 error in 100: below 5%
            "interval": "1m",
            "input_series": [
                {"series": requests + ', outcome="error"}', "values": "0+1x30"},
                {"series": requests + ', outcome="length"}', "values": "0+99x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "QwenChatErrorRatioHigh", "exp_alerts": []}
            ],
        },
        {  # never loaded for longer than model.loadTimeoutSeconds (600 s), through a container restart
            "interval": "1m",
            "input_series": [
                {"series": loaded + ', pod="p-a", pid="11"}', "values": "0x30"},
                {"series": loaded + ', pod="p-b", pid="21"}', "values": "0x7"},
                {"series": loaded + ', pod="p-b", pid="22"}', "values": "_x10 0x20"},
                {"series": loaded + ', pod="p-c", pid="31"}', "values": "0x4 1x25"},
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "QwenChatModelNotLoaded", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "QwenChatModelNotLoaded",
                    "exp_alerts": [
                        _alert(rules, "QwenChatModelNotLoaded", **pod),
                        _alert(rules, "QwenChatModelNotLoaded", **pod | {"pod": "p-b"}),
                    ],
                },
            ],
        },
        {  # 3 worker exits in 15 minutes fire, 2 do not, and exits older than 15 minutes are forgotten
            "interval": "1m",
            "input_series": [
                {"series": "qwen_chat_worker_exits_total{" + S + ', pod="p-a"}', "values": "0x20 1 2 3 3x30"},
                {"series": "qwen_chat_worker_exits_total{" + S + ', pod="p-b"}', "values": "0x20 1 2 2x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "QwenChatWorkersRestarting", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "QwenChatWorkersRestarting",
                    "exp_alerts": [
                        _alert(rules, "QwenChatWorkersRestarting", "3", **pod),
                    ],
                },
                {"eval_time": "45m", "alertname": "QwenChatWorkersRestarting", "exp_alerts": []},
            ],
        },
        {  # kube-state-metrics: only the release's Deployment pods in its namespace count
            "interval": "1m",
            "input_series": [
                {
                    "series": f'{restarts}, namespace="{NAMESPACE}", pod="{POD}"}}',
                    "values": "0x20 1 2 3 3x30",
                },
                {
                    "series": f'{restarts}, namespace="{NAMESPACE}", pod="{JOB}-test-connection"}}',
                    "values": "0x20 5 10 15x30",
                },
                {
                    "series": f'{restarts}, namespace="{NAMESPACE}", pod="other-6f9c7d8b5-k2x7q"}}',
                    "values": "0x20 5 10 15x30",
                },
                {"series": f'{restarts}, namespace="other", pod="{POD}"}}', "values": "0x20 5 10 15x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "QwenChatPodCrashLooping", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "QwenChatPodCrashLooping",
                    "exp_alerts": [
                        _alert(rules, "QwenChatPodCrashLooping", "3", namespace=NAMESPACE, pod=POD),
                    ],
                },
            ],
        },
    ]


def test_alert_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    rule = rendered_rules(RULE_VALUES)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    check = subprocess.run(
        [promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout + check.stderr
    tests = _promtool_tests(alerting_rules(rule))
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"]}
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    quiet = {t["alertname"] for case in tests for t in case["alert_rule_test"] if not t["exp_alerts"]}
    assert tested == fired == quiet == ALERTS, "every alert is shown to fire and to stay quiet"
    tests_file = tmp_path / "rules_test.yaml"
    spec = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests}
    tests_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run(
        [promtool(), "test", "rules", tests_file.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- the live service


def _assert_load_did_everything(result: LoadResult) -> None:
    assert result.finish_reasons["length"] + result.finish_reasons["stop"] >= 8, result
    assert result.finish_reasons["cancelled"] >= 1, result
    assert result.disconnects >= 1
    assert result.refused_handshakes and set(result.refused_handshakes) <= {401, 403}, result
    assert result.capped_sockets >= 1, "five sockets of one key on two workers that take two each"
    assert result.http_status[401] >= 1 and result.http_status[429] >= 1 and result.http_status[200] >= 4, (
        result
    )


def test_every_dashboard_panel_returns_data_from_a_live_prometheus(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    users = Users(40)
    settings = {**SERVE_SETTINGS, "credentials_dir": str(credentials(tmp_path / "keys", users))}
    board = dashboard()
    with (
        serve_process(tmp_path, tiny_model_dir, workers=2, **settings) as server,
        prometheus(tmp_path / "prometheus", server.port) as prom,
    ):
        prom.wait_ready()
        server.wait_ready(timeout=180)
        wait_until(prom.target_up, timeout=30, interval=0.2)
        assert prom.value("qwen_chat_worker_exits_total") == 0
        prom.wait_scrapes(2)
        _assert_a_fresh_pod_has_every_series(prom, board)
        # One round: the series were there at 0 before it, so rate() sees it rise.
        result = asyncio.run(load_round(server, users))
        _assert_load_did_everything(result)
        prom.wait_scrapes(3)

        # The alert expressions match the series the service really exports, and a healthy service is quiet.
        rules = alerting_rules(rendered_rules())
        for name, rule in rules.items():
            expr = rule["expr"]
            condition = re.fullmatch(r"(.*\S)\s*(?:>|<|==)\s*[\d.]+", expr, re.DOTALL)
            assert condition, f"{name}: ends with a comparison: {expr}"
            if name not in {
                "QwenChatErrorRatioHigh",
                "QwenChatPodCrashLooping",
            }:  # no errors, no kube-state-metrics
                assert finite(prom.query(condition.group(1))), (
                    f"{name}: {condition.group(1)} matches no series"
                )
            if name != "QwenChatTimeToFirstTokenHigh":  # latency depends on the shared machine
                assert prom.query(expr) == [], f"{name} would fire on a healthy service"

        victim = kill_a_worker(server)
        wait_until(lambda: prom.value("qwen_chat_worker_exits_total") == 1, timeout=30, interval=0.2)
        prom.wait_scrapes(2)

        # Grafana's variables resolve to the scraped target's labels.
        variables = {v["name"]: v for v in board["templating"]["list"]}
        values = grafana_variables()
        for name in ("namespace", "pod", "model"):
            selector, label = variable_query(variables[name])
            assert values[name] in prom.label_values(label, substitute(selector, values)), name

        failures = []
        for target in targets(board):
            expr = substitute(target.expr, values)
            result_vector = prom.query(expr)
            if not finite(result_vector):
                failures.append(f"{target}: {expr} -> {result_vector}")
        assert not failures, "panel queries without a finite value:\n" + "\n".join(failures)

        restarts = prom.value(substitute(_panel_expr(board, "Worker restarts"), values))
        assert restarts is not None and restarts >= 1, f"the SIGKILL of worker {victim} shows as a restart"
        tokens = prom.value(substitute(_panel_expr(board, "Generated tokens/s"), values))
        assert tokens is not None and tokens > 0
        refusals = prom.value(substitute(_panel_expr(board, "Refusals by reason"), values))
        assert refusals is not None and refusals > 0, "the burst's 429s are refusals (reason rate_limited)"
        capped = prom.value(substitute(_panel_expr(board, "Per-user caps"), values))
        assert capped is not None and capped > 0, "the capped key's 1013 closes and 429s"

        # The preview draws every panel from the same Prometheus.
        TEST_OUTPUT.mkdir(exist_ok=True)
        png = TEST_OUTPUT / "dashboard.png"
        png.unlink(missing_ok=True)
        preview = run_preview(prom, png, minutes=2)
        assert preview.returncode == 0, preview.stdout + preview.stderr
        assert "0 with no data" in preview.stderr, preview.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def _assert_a_fresh_pod_has_every_series(prom: Any, board: dict[str, Any]) -> None:
    """Before any chat, every series a panel selects exists (at 0), each label value the panels name included,
    so that a fresh pod's dashboard and `rate()` show 0, not "No data"."""
    values = grafana_variables()
    missing = []
    for target in targets(board):
        for series in re.findall(r"qwen_chat_\w+\{[^}]*\}", substitute(target.expr, values)):
            if not prom.query(f"count({series})"):
                missing.append(f"{target}: {series}")
    assert not missing, "no series on a fresh pod:\n" + "\n".join(missing)
    outcomes = prom.query("count by (transport, outcome) (qwen_chat_requests_total)")
    assert len(outcomes) == 4 * len(OUTCOMES), "each transport x outcome of requests_total, at 0"
    assert prom.value("sum(qwen_chat_requests_total)") == 0
    reasons = prom.query("count by (transport, reason) (qwen_chat_auth_failures_total)")
    assert {(r["metric"]["transport"], r["metric"]["reason"]) for r in reasons} == {
        ("ws", "key"),
        ("ws", "origin"),
        ("http", "key"),
    }
    refusals = prom.query("count by (transport, reason) (qwen_chat_refusals_total)")
    assert len(refusals) == len(Transport) * len(REFUSAL_REASONS) + 1, "and /ws's user_connections"
    rate = prom.value(substitute(_panel_expr(board, "Rate-limited requests"), values))
    assert rate == 0, "rate() of a series that exists is 0, not no data"


def _panel_expr(board: dict[str, Any], title: str) -> str:
    (panel,) = [p for p in panels(board) if p["title"] == title]
    expr: str = panel["targets"][0]["expr"]
    return expr


def test_a_query_without_data_fails_the_panel_check() -> None:
    """The live test's criterion rejects empty and NaN results (histogram_quantile without observations)."""
    assert finite([]) == []
    assert finite([{"metric": {}, "value": [0, "NaN"]}]) == []
    assert finite([{"metric": {}, "value": [0, "+Inf"]}, {"metric": {}, "value": [0, "2"]}]) == [2.0]
    with pytest.raises(KeyError):
        substitute('x{pod=~"$unknown"}', grafana_variables())
    assert substitute(
        'rate(x{pod=~"${pod}", m=~"[[model]]"}[$__rate_interval])', grafana_variables("1m")
    ) == (f'rate(x{{pod=~"{POD}", m=~"{MODEL}"}}[1m])')
