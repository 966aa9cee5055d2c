"""schemathesis against the service's own /openapi.json: no 5xx, and responses match the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.live_server import LiveServer
from tests.support.secret_volume import KEYS


def test_schemathesis_finds_no_server_errors(serve) -> None:  # type: ignore[no-untyped-def]
    schemathesis = Path(sys.executable).with_name("schemathesis")
    # Short replies and no rate limit: the fuzzer should reach the code, not the limits.
    with serve(max_new_tokens=8, rate_limit="1000000/minute") as live:
        live: LiveServer
        result = subprocess.run(
            [
                str(schemathesis), "run", live.http + "/openapi.json",
                "--header", f"Authorization: Bearer {KEYS['alice']}",
                "--checks", "not_a_server_error,response_schema_conformance",
                "--max-examples", "30",
                "--request-timeout", "30",
                "--generation-deterministic",
            ],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1], report
