"""The `qwen-chat` command: `serve` runs the service, `make-tiny-model` builds the test model,
`smoke-test` checks a running service with one authenticated chat (the chart's `helm test`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwen-chat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service (gunicorn with uvicorn workers)")
    serve.add_argument("--host", help="overrides QWEN_CHAT_HOST (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="overrides QWEN_CHAT_PORT (default 8000)")
    serve.add_argument("--workers", type=int, help="overrides QWEN_CHAT_WORKERS (default 1)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development: listen on 127.0.0.1, create a development key, and fall back to the tiny "
        "model when no model is configured and the hub cannot be reached",
    )

    tiny = commands.add_parser("make-tiny-model", help="build a small random Qwen model used by tests")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--family",
        choices=["qwen2", "qwen3", "qwen", "qwen3_moe", "qwen2_moe", "qwen3_5", "qwen3_5_moe", "qwen3_next"],
        default="qwen2",
        help="qwen2 (Qwen2.5's layout, the default), qwen3, qwen (Qwen v1's own layout, qwen.tiktoken), "
        "qwen3_moe, qwen2_moe, qwen3_5 or qwen3_5_moe (Qwen3.5's released image-text layouts) or qwen3_next",
    )

    smoke = commands.add_parser(
        "smoke-test", help="one authenticated chat round trip against a running service"
    )
    smoke.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    smoke.add_argument(
        "--credentials-dir", type=Path, help="a mounted credentials Secret; its first user's key is used"
    )
    smoke.add_argument("--message", default="Hello! Say something short.")
    smoke.add_argument("--timeout", type=float, default=120.0, help="seconds for readiness plus the reply")

    args = parser.parse_args(argv)
    if args.command == "smoke-test":
        return _smoke_test(args)
    if args.command == "make-tiny-model":
        from qwen_chat.engine.tiny import make_tiny_model

        print(make_tiny_model(args.directory, seed=args.seed, family=args.family))
        return 0
    return _serve(args)


def _smoke_test(args: argparse.Namespace) -> int:
    import json

    from qwen_chat.smoke_test import SmokeTestFailed, run

    try:
        result = run(args.url, args.credentials_dir, args.message, args.timeout)
    except SmokeTestFailed as exc:
        print(f"qwen-chat smoke-test: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _serve(args: argparse.Namespace) -> int:
    environ = os.environ
    for name in ("host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            environ[f"QWEN_CHAT_{name.upper()}"] = str(value)
    if args.dev:
        from qwen_chat.runtime import dev

        dev.announce(dev.prepare(environ))
    # Validate settings here, so a typo is one clear line rather than a traceback in every worker.
    from pydantic import ValidationError

    from qwen_chat.settings import Settings
    from qwen_chat.tracing import TracingConfigError, check_environment

    try:
        check_environment(headers_file=Settings().otlp_headers_file)
    except ValidationError as exc:
        print(f"qwen-chat: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except TracingConfigError as exc:
        print(f"qwen-chat: invalid configuration: {exc}", file=sys.stderr)
        return 2
    # exec: gunicorn's master becomes this process, so signals from Kubernetes reach it directly.
    os.execv(
        sys.executable,
        [sys.executable, "-m", "gunicorn", "--config", "python:qwen_chat.runtime.gunicorn_conf"],
    )
    return 0  # unreachable


if __name__ == "__main__":
    raise SystemExit(main())
