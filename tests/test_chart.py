"""The Helm chart, checked by real helm, kubernetes-validate and checkov, and read the way a reviewer would.

Every `ci/*-values.yaml` scenario is linted, rendered for the oldest and newest supported Kubernetes,
validated strictly against that version's schemas, and scanned by checkov with no failed check.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_chat import tracing
from qwen_chat.settings import Settings
from tests.support.chart_render import (
    CHART,
    NAMESPACE,
    deployment,
    env_of,
    find,
    helm_template,
    render,
    server,
)
from tests.support.chart_tools import REPO, run_tool
from tests.support.crd_schema import crd_errors

SCENARIOS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
KUBERNETES = ["1.29.0", "1.35.0"]


def values(scenario: str | None) -> dict[str, Any]:
    """The chart's defaults merged with one scenario (maps merge, everything else replaces)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = (
                merge(base[key], value)
                if isinstance(value, dict) and isinstance(base.get(key), dict)
                else value
            )
        return out

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load((CHART / "ci" / scenario).read_text())) if scenario else defaults


# --- the linters ---------------------------------------------------------------------------------------


def test_every_scenario_the_issue_names_exists() -> None:
    assert SCENARIOS == [
        "autoscaling-values.yaml",
        "cpu-values.yaml",
        "existing-secret-values.yaml",
        "gpu-values.yaml",
        "inference-pool-values.yaml",
        "ingress-values.yaml",
        "monitoring-values.yaml",
        "qwen-7b-chat-values.yaml",
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    result = run_tool("helm", "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / scenario))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube", KUBERNETES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_validate_strictly(scenario: str, kube: str, tmp_path: Path) -> None:
    result = helm_template("-f", str(CHART / "ci" / scenario), kube=kube)
    assert result.returncode == 0, result.stderr
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(result.stdout)
    validated = run_tool("kubernetes-validate", "--strict", "-k", kube, str(manifest))
    output = validated.stdout + validated.stderr
    assert validated.returncode == 0, output
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    passed = output.count(" passed for resource ")
    operator_kinds = {"ServiceMonitor", "PrometheusRule", "InferencePool"} & kinds
    # Every core object was validated; only the custom kinds lack a schema (checked further below: the
    # InferencePool against its CRD).
    assert passed == sum(1 for doc in yaml.safe_load_all(result.stdout) if doc) - sum(
        1 for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] in operator_kinds
    ), output
    for line in output.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in operator_kinds), line


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The validator really checks fields (a silent pass would make the test above worthless)."""
    docs = [dict(doc) for doc in render("cpu-values.yaml")]
    broken = next(doc for doc in docs if doc["kind"] == "Service")
    broken["spec"] = {**broken["spec"], "portz": []}
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(broken))
    validated = run_tool("kubernetes-validate", "--strict", "-k", "1.29.0", str(manifest))
    assert validated.returncode != 0
    assert "portz" in validated.stdout + validated.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkov_finds_nothing_and_every_skip_says_why(scenario: str) -> None:
    result = run_tool(
        "checkov",
        "--config-file",
        str(CHART / ".checkov.yaml"),
        "--framework",
        "helm",
        "--directory",
        str(CHART),
        "--var-file",
        str(CHART / "ci" / scenario),
        "--skip-download",
        "--output",
        "json",
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (helm,) = [item for item in reports if item.get("check_type") == "helm"]
    summary = helm["summary"]
    assert summary["failed"] == 0, [check["check_id"] for check in helm["results"]["failed_checks"]]
    # helm rendered the chart and checkov checked it (without helm on PATH it passes with nothing checked).
    assert summary["passed"] > 100, summary
    for skipped in helm["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]


# --- what a reviewer checks by hand -------------------------------------------------------------------


def test_gpu_is_requested_by_default_and_not_in_the_cpu_scenario() -> None:
    gpu = server("gpu-values.yaml")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(gpu)["QWEN_CHAT_DEVICE"] == "auto"
    cpu_docs = render("cpu-values.yaml")
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(list(cpu_docs))
    cpu = server("cpu-values.yaml")
    assert env_of(cpu)["QWEN_CHAT_DEVICE"] == "cpu"
    assert cpu["image"].endswith("-cpu")


def test_the_qwen_7b_chat_scenario_converts_onto_the_model_cache_claim() -> None:
    """Qwen v1 is converted under HF_HOME (settings.conversion_cache_dir): on the claim, so a restart reuses it."""
    docs = render("qwen-7b-chat-values.yaml")
    pod = deployment("qwen-7b-chat-values.yaml")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["QWEN_CHAT_MODEL"] == "Qwen/Qwen-7B-Chat" and "QWEN_CHAT_CONVERSION_CACHE" not in env
    cache = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == env["HF_HOME"])
    volume = next(v for v in pod["volumes"] if v["name"] == cache["name"])
    claim = next(d for d in find(docs, "PersistentVolumeClaim"))
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"  # the download and its conversion


def test_gpu_scheduling_values_reach_the_pod() -> None:
    spec = deployment("existing-secret-values.yaml")["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_qwen_chat_variable_is_a_setting_and_the_settings_validate(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(server(scenario))
    chart_settings = {name for name in env if name.startswith("QWEN_CHAT_")}
    unknown = {
        name
        for name in chart_settings
        if name.removeprefix("QWEN_CHAT_").lower() not in Settings.model_fields
    }
    assert not unknown, f"the chart sets variables Settings does not read: {unknown}"
    for name in list(chart_settings):
        monkeypatch.setenv(name, env[name])
    settings = Settings()
    assert settings.model == values(scenario)["model"]["name"]
    assert settings.max_waiting == values(scenario)["server"]["maxWaiting"]
    assert settings.auth_enabled is True


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_credentials_secret_is_mounted_read_only_where_settings_reads_it(scenario: str) -> None:
    container = server(scenario)
    credentials_dir = env_of(container)["QWEN_CHAT_CREDENTIALS_DIR"]
    assert credentials_dir == str(Settings.model_fields["credentials_dir"].default)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == credentials_dir]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in deployment(scenario)["spec"]["template"]["spec"]["volumes"]}
    secret_name = volumes[mount["name"]]["secret"]["secretName"]
    auth = values(scenario)["auth"]
    if auth["existingSecret"]:
        assert secret_name == auth["existingSecret"]
        assert not find(render(scenario), "Secret")
    else:
        (created,) = find(render(scenario), "Secret")
        assert created["metadata"]["name"] == secret_name
        assert created["stringData"] == auth["devCredentials"]


def test_auth_without_a_secret_fails_with_a_clear_message() -> None:
    result = helm_template()
    assert result.returncode != 0
    assert "auth.existingSecret" in result.stderr


def test_the_hub_token_is_a_mounted_file_not_an_environment_variable() -> None:
    container = server("existing-secret-values.yaml")
    env = env_of(container)
    assert "HF_TOKEN" not in env
    token_path = Path(env["HF_TOKEN_PATH"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(token_path.parent)]
    assert mount["readOnly"] is True
    volumes = {
        v["name"]: v for v in deployment("existing-secret-values.yaml")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes[mount["name"]]["secret"] == {
        "secretName": "hf-token",
        "defaultMode": 0o440,
        "items": [{"key": "HF_TOKEN", "path": token_path.name}],
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_use_the_service_endpoints_and_the_load_budget(scenario: str) -> None:
    container = server(scenario)
    port = container["ports"][0]  # then the KV-events port, where those are on
    assert port["name"] == "http" and port["containerPort"] == int(env_of(container)["QWEN_CHAT_PORT"])
    startup, readiness, liveness = (
        container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")
    )
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    assert liveness["httpGet"] == {"path": "/livez", "port": "http"}
    # The startup probe covers the whole load timeout, and no more than one period beyond it.
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    load_timeout = values(scenario)["model"]["loadTimeoutSeconds"]
    assert load_timeout <= budget < load_timeout + startup["periodSeconds"]


def test_startup_budget_follows_the_load_timeout_value() -> None:
    startup = server("cpu-values.yaml", "model.loadTimeoutSeconds=95")["startupProbe"]
    assert startup["failureThreshold"] == math.ceil(95 / startup["periodSeconds"])


@pytest.mark.parametrize("drain", ["30", "120"])
def test_grace_period_outlasts_prestop_plus_the_drain(drain: str) -> None:
    pod = deployment("cpu-values.yaml", f"server.drainSeconds={drain}")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert env_of(container)["QWEN_CHAT_DRAIN_SECONDS"] == drain
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    # gunicorn's graceful_timeout is DRAIN_SECONDS + 10 (gunicorn_conf.py); the kubelet must wait longer.
    assert pod["terminationGracePeriodSeconds"] > int(prestop[1]) + int(drain) + 10


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_contexts_are_locked_down(scenario: str) -> None:
    pod = deployment(scenario)["spec"]["template"]["spec"]
    pod_context, container_context = pod["securityContext"], pod["containers"][0]["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] >= 10000
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container_context["readOnlyRootFilesystem"] is True
    assert container_context["allowPrivilegeEscalation"] is False
    assert container_context["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # With a read-only root, every path the service writes is a volume.
    env = env_of(pod["containers"][0])
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {env["QWEN_CHAT_STATE_DIR"], env["HF_HOME"], "/tmp"} <= mounts


def test_the_test_pod_runs_the_smoke_test_against_the_service_with_a_mounted_key() -> None:
    docs = render("cpu-values.yaml")
    (service,) = find(docs, "Service")
    (pod,) = find(docs, "Pod", hook=True)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == server("cpu-values.yaml")["image"]
    command = container["command"]
    assert command[:2] == ["qwen-chat", "smoke-test"]
    url = command[command.index("--url") + 1]
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    credentials_dir = command[command.index("--credentials-dir") + 1]
    (mount,) = container["volumeMounts"]
    assert mount == {"name": "credentials", "mountPath": credentials_dir, "readOnly": True}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_selectors_agree_across_service_monitor_pdb_hpa_and_network_policy() -> None:
    docs = render("monitoring-values.yaml")
    pod_labels = deployment("monitoring-values.yaml")["spec"]["template"]["metadata"]["labels"]
    (service,) = find(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (monitor,) = find(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pdb,) = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (policy,) = find(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert {"podSelector": {}} in rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in rule[
        "from"
    ]


def test_a_network_policy_without_peers_admits_no_one() -> None:
    (policy,) = find(render("cpu-values.yaml", "networkPolicy.allowSameNamespace=false"), "NetworkPolicy")
    assert policy["spec"]["ingress"] == []


def test_autoscaling_scales_the_deployment_on_queue_depth() -> None:
    docs = render("autoscaling-values.yaml")
    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    dep = deployment("autoscaling-values.yaml")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "qwen_chat_requests_waiting"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert "replicas" in deployment("cpu-values.yaml")["spec"]


POOL_CRD = "inference.networking.k8s.io_inferencepools.yaml"


@pytest.mark.parametrize("kube", KUBERNETES)
def test_the_inference_pool_validates_against_its_crd_and_points_the_picker_at_the_pods(kube: str) -> None:
    docs = render("inference-pool-values.yaml", kube=kube)
    (pool,) = find(docs, "InferencePool")
    assert crd_errors(POOL_CRD, pool) == []
    dep = deployment("inference-pool-values.yaml")
    pod = dep["spec"]["template"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == ports
    (test_pod,) = find(docs, "Pod", hook=True)
    assert not pool["spec"]["selector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items(), (
        "the helm test pod is not in the pool"
    )
    # The picker reads vLLM's gauge names (the default mapping); the label says so to a picker whose
    # default engine is another.
    assert pod["metadata"]["labels"]["llm-d.ai/engine-type"] == "vllm"
    assert pool["spec"]["endpointPickerRef"] == {
        "kind": "Service",
        "name": "qc-router-epp",  # what `helm install qc-router ...llm-d-router-gateway` creates
        "port": {"number": 9002},
        "failureMode": "FailOpen",
    }
    # The probes and /metrics need no key, so the picker (which sends none) can scrape the pod port.
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    custom = find(
        render(
            "inference-pool-values.yaml",
            "inferencePool.endpointPicker.service=epp",
            "inferencePool.endpointPicker.failureMode=FailClose",
        ),
        "InferencePool",
    )
    assert custom[0]["spec"]["endpointPickerRef"]["name"] == "epp"
    assert crd_errors(POOL_CRD, custom[0]) == []
    # Off by default: no pool, no engine label.
    assert find(render("cpu-values.yaml"), "InferencePool") == []
    assert (
        "llm-d.ai/engine-type" not in deployment("cpu-values.yaml")["spec"]["template"]["metadata"]["labels"]
    )


def test_kv_events_publish_on_a_port_the_picker_may_reach() -> None:
    """The inference-pool scenario turns the events on: the pod publishes on 5557 (what llm-d's precise
    prefix-cache producer dials on each pod), the NetworkPolicy admits the picker to it, and the render
    endpoints answer the picker's token producer without a key. Off by default."""
    docs = render("inference-pool-values.yaml")
    pod = deployment("inference-pool-values.yaml")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {"name": "kv-events", "containerPort": 5557, "protocol": "TCP"} in container["ports"]
    env = env_of(container)
    assert env["QWEN_CHAT_KV_EVENTS_ENDPOINT"] == "tcp://*:5557"
    assert env["QWEN_CHAT_RENDER_WITHOUT_KEY"] == "true"
    (pod_ip,) = [item for item in container["env"] if item["name"] == "POD_IP"]
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    labels = pod["metadata"]["labels"]
    assert labels["llm-d.ai/inference-serving"] == labels["llm-d.ai/inferenceServing"] == "true"
    (policy,) = find(docs, "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert {"port": "kv-events", "protocol": "TCP"} in rule["ports"]
    moved = deployment("inference-pool-values.yaml", "kvEvents.port=6000")["spec"]["template"]
    assert env_of(moved["spec"]["containers"][0])["QWEN_CHAT_KV_EVENTS_ENDPOINT"] == "tcp://*:6000"
    quiet = server("cpu-values.yaml")
    assert "QWEN_CHAT_KV_EVENTS_ENDPOINT" not in env_of(quiet)
    assert [p["name"] for p in quiet["ports"]] == ["http"]
    refused = helm_template("--set", "kvEvents.enabled=true,kvEvents.port=8000")
    assert refused.returncode != 0 and "port" in refused.stderr, "the events cannot take the server's port"


def test_the_crd_check_rejects_what_the_api_server_would() -> None:
    """The schema check is not vacuous: an unknown field, a wrong enum and a missing field all fail."""
    (pool,) = find(render("inference-pool-values.yaml"), "InferencePool")
    spec = pool["spec"]
    assert crd_errors(POOL_CRD, {**pool, "spec": {**spec, "targetPortz": []}})
    picker = {**spec["endpointPickerRef"], "failureMode": "FailClosed"}
    assert crd_errors(POOL_CRD, {**pool, "spec": {**spec, "endpointPickerRef": picker}})
    assert crd_errors(POOL_CRD, {**pool, "spec": {k: v for k, v in spec.items() if k != "selector"}})
    assert crd_errors(POOL_CRD, {**pool, "apiVersion": "inference.networking.x-k8s.io/v1alpha2"})
    assert "failureMode" in " ".join(
        crd_errors(POOL_CRD, {**pool, "spec": {**spec, "endpointPickerRef": picker}})
    )
    result = helm_template(
        "--set", "inferencePool.enabled=true,inferencePool.endpointPicker.failureMode=Nope"
    )
    assert result.returncode != 0 and "failureMode" in result.stderr, "the values schema refuses it first"


def test_traces_go_to_the_collector_naming_the_pod_with_headers_from_a_secret() -> None:
    assert not [name for name in env_of(server("cpu-values.yaml")) if name.startswith("OTEL_")], "off"
    scenario = values("monitoring-values.yaml")["tracing"]
    container = server("monitoring-values.yaml")
    env = env_of(container)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == scenario["endpoint"]
    assert env["OTEL_SERVICE_NAME"] == deployment("monitoring-values.yaml")["metadata"]["name"]
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0.25",
    )
    tracing.check_environment(env)  # what the server itself accepts
    assert tracing.provider.wanted(env)
    names = [item["name"] for item in container["env"]]
    # $(VAR) expands only variables defined earlier in the list.
    assert names.index("OTEL_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.pod.name=$(OTEL_POD_NAME),k8s.namespace.name=$(OTEL_POD_NAMESPACE)"
    )
    # The headers (a tenant's credentials) are a mounted file, like the keys, not an environment variable.
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "otlp-headers"]
    assert mount["readOnly"] is True
    assert env["QWEN_CHAT_OTLP_HEADERS_FILE"] == mount["mountPath"] + "/headers"
    volumes = deployment("monitoring-values.yaml")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "otlp-headers"]
    assert volume["secret"]["secretName"] == "otel-collector-headers"
    assert volume["secret"]["items"] == [{"key": "headers", "path": "headers"}]


def test_ingress_routes_to_the_service_with_websocket_timeouts() -> None:
    docs = render("ingress-values.yaml")
    (ingress,) = find(docs, "Ingress")
    (service,) = find(docs, "Service")
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert env_of(server("ingress-values.yaml"))["QWEN_CHAT_ALLOWED_ORIGINS"] == "https://chat.example.com"


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("server.workers=two", "/server/workers"),
        ("gpu.enabled=maybe", "/gpu/enabled"),
        ("model.device=tpu", "/model/device"),
        ("servr.workers=2", "servr"),
        ("model.cache.type=s3", "/model/cache/type"),
        ("tracing.endpoint=collector:4318", "/tracing/endpoint"),
        ("tracing.sampler=sometimes", "/tracing/sampler"),
        ("tracing.samplerArg=2", "/tracing/samplerArg"),
        ("server.requestTimeout=0", "/server/requestTimeout"),
    ],
)
def test_a_wrong_value_fails_the_schema_and_names_the_key(setting: str, complaint: str) -> None:
    result = helm_template("-f", str(CHART / "ci" / "cpu-values.yaml"), "--set", setting)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


def test_every_values_key_is_documented() -> None:
    """Each key has a `# --` comment block above it, unless it is a map of documented keys or sits inside
    the value of a documented key (e.g. `resources.requests.cpu`)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        above = number - 1
        while (
            above >= 0
            and lines[above].strip().startswith("#")
            and not lines[above].strip().startswith("# --")
        ):
            above -= 1
        documented = above >= 0 and lines[above].strip().startswith("# --")
        next_line = next((later for later in lines[number + 1 :] if later.strip()), "")
        is_map = stripped.endswith(":") and len(next_line) - len(next_line.lstrip()) > indent
        if not (documented or is_map or any(doc for _, doc in ancestors)):
            undocumented.append(f"line {number + 1}: {stripped}")
        ancestors.append((indent, documented))
    assert not undocumented, undocumented


def test_notes_give_the_port_forward_command_and_the_page_url() -> None:
    result = run_tool(
        "helm",
        "install",
        "qc",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "-f",
        str(CHART / "ci" / "cpu-values.yaml"),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl --namespace {NAMESPACE} port-forward service/qc-qwen-chat 8000:8000" in notes
    assert "http://127.0.0.1:8000/" in notes
    assert "helm test qc" in notes


def test_the_readme_install_commands_match_the_chart() -> None:
    """The README's `helm install` works as written, and its port-forward line is the one NOTES.txt prints."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install on Kubernetes", 1)[1].split("\n## ", 1)[0]
    (install,) = [line for line in section.splitlines() if line.startswith("helm install ")]
    (forward,) = [line for line in section.splitlines() if line.startswith("kubectl -n chat port-forward")]
    args = shlex.split(install)[2:]
    args[args.index("charts/qwen-chat")] = str(CHART)
    result = run_tool("helm", "install", *args, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert forward.replace("kubectl -n chat", "kubectl --namespace chat") in notes
    (secret_line,) = [line for line in section.splitlines() if "create secret generic" in line]
    assert secret_line.split("create secret generic ")[1].split()[0] in install


def test_requests_have_no_deadline_unless_a_value_sets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "QWEN_CHAT_REQUEST_TIMEOUT" not in env_of(server("cpu-values.yaml"))
    env = env_of(server("cpu-values.yaml", "server.requestTimeout=90"))
    assert env["QWEN_CHAT_REQUEST_TIMEOUT"] == "90"
    monkeypatch.setenv("QWEN_CHAT_REQUEST_TIMEOUT", env["QWEN_CHAT_REQUEST_TIMEOUT"])
    assert Settings().request_timeout == 90


def test_sampling_defaults_are_left_to_the_checkpoint_unless_a_value_sets_one() -> None:
    sampling = ["TEMPERATURE", "TOP_P", "TOP_K", "MIN_P", "REPETITION_PENALTY", "PRESENCE_PENALTY"]
    env = env_of(server("cpu-values.yaml"))
    assert env["QWEN_CHAT_GENERATION_CONFIG"] == "auto"
    assert not {f"QWEN_CHAT_{name}" for name in [*sampling, "FREQUENCY_PENALTY"]} & set(env)
    env = env_of(server("cpu-values.yaml", "server.topK=20", "server.presencePenalty=0"))
    assert env["QWEN_CHAT_TOP_K"] == "20" and env["QWEN_CHAT_PRESENCE_PENALTY"] == "0"  # 0 is a value
    assert "QWEN_CHAT_TEMPERATURE" not in env
