"""The image's entrypoint, run as a plain process (no Docker engine here) with the environment the chart sets.

The Dockerfile's ENTRYPOINT and ENV and the CPU scenario's container env are read from the files, not
copied: the volumes the chart mounts become folders under tmp_path, the model is the offline tiny model,
and the server listens on 127.0.0.1. It must reach /readyz 200, pass the chart's own `helm test` command
and the image's HEALTHCHECK, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import yaml

from tests.support.chart_render import CHART, env_of, find, render, server
from tests.support.chart_tools import REPO
from tests.support.dockerfile_parser import DOCKERFILE, parse_dockerfile
from tests.support.live_server import free_port, wait_until
from tests.support.secret_volume import SecretVolume

SCENARIO = "cpu-values.yaml"


def _image_env(image_env: dict[str, str], volumes: dict[str, Path]) -> dict[str, str]:
    """The Dockerfile's ENV on this machine: /opt/venv is .venv, /tmp is the test's /tmp volume."""
    env = dict(image_env)
    env["PATH"] = (
        env["PATH"].replace("/opt/venv/bin", str(REPO / ".venv" / "bin")).replace("$PATH", os.environ["PATH"])
    )
    env["VIRTUAL_ENV"] = str(REPO / ".venv")
    for key, value in env.items():
        if value in volumes:
            env[key] = str(volumes[value])
    env["TMPDIR"] = str(volumes["/tmp"])
    return env


def test_entrypoint_with_the_charts_env_serves_and_passes_the_helm_test(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    entrypoint = json.loads(dockerfile.final.last("ENTRYPOINT")) + json.loads(dockerfile.final.last("CMD"))
    docs = render(SCENARIO)
    container = server(SCENARIO)
    pod_spec = find(docs, "Deployment")[0]["spec"]["template"]["spec"]
    # Each volume the chart mounts is a fresh folder; the credentials one is laid out the way kubelet does.
    volumes = {mount["mountPath"]: tmp_path / mount["name"] for mount in container["volumeMounts"]}
    for folder in volumes.values():
        folder.mkdir()
    credentials_path = next(path for path, folder in volumes.items() if folder.name == "credentials")
    keys = yaml.safe_load((CHART / "ci" / SCENARIO).read_text())["auth"]["devCredentials"]
    SecretVolume(volumes[credentials_path]).write(keys)

    port = free_port()
    env = _image_env(dockerfile.final.env(), volumes)
    for item in container["env"]:
        value = item["value"]
        env[item["name"]] = str(volumes[value]) if value in volumes else value
    # The only departures from the chart: the offline tiny model instead of a hub id, and loopback.
    env.update(
        QWEN_CHAT_MODEL=str(tiny_model_dir),
        HF_HUB_OFFLINE="1",
        QWEN_CHAT_HOST="127.0.0.1",
        QWEN_CHAT_PORT=str(port),
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            entrypoint, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=120, interval=0.2)

        # The chart's `helm test` pod command, pointed at this server and the same mounted Secret.
        (test_pod,) = find(docs, "Pod", hook=True)
        command = list(test_pod["spec"]["containers"][0]["command"])
        command[command.index("--url") + 1] = base
        test_credentials = command[command.index("--credentials-dir") + 1]
        command[command.index("--credentials-dir") + 1] = str(volumes[test_credentials])
        smoke = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        result = json.loads(smoke.stdout)
        assert result["ok"] is True and result["user"] == next(iter(keys))
        assert result["usage"]["completion_tokens"] >= 1
        assert all(key not in smoke.stdout + smoke.stderr for key in keys.values())

        # The image's HEALTHCHECK command (Docker only) answers from the same environment.
        healthcheck = dockerfile.final.last("HEALTHCHECK")
        check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
        assert subprocess.run(check, env=env, timeout=30, check=False).returncode == 0

        # SIGTERM (what the kubelet sends after preStop) drains and exits 0 within the grace period.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=pod_spec["terminationGracePeriodSeconds"]) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), "the chart asks for JSON logs"
    assert all(key not in text for key in keys.values())
    # The workers' shared files went to the state volume the chart mounts (the root filesystem is read-only).
    state = volumes[env_of(container)["QWEN_CHAT_STATE_DIR"]]
    assert any((state / "metrics").glob("*.db")), "Prometheus multiprocess files belong on the state volume"


def test_a_failing_smoke_test_says_why_and_exits_non_zero(tmp_path: Path) -> None:
    """Against nothing listening, the helm test command fails with a reason instead of hanging."""
    credentials = tmp_path / "credentials"
    SecretVolume(credentials).write({"ci": "some-key-that-is-long-enough"})
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "qwen-chat"), "smoke-test", "--url", f"http://127.0.0.1:{free_port()}",
         "--credentials-dir", str(credentials), "--timeout", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAILED" in result.stderr and "/readyz not ready" in result.stderr
    assert "some-key-that-is-long-enough" not in result.stdout + result.stderr
