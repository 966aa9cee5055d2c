"""docker/Dockerfile and .dockerignore: hadolint and checkov find nothing, and the image keeps its promises."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart_tools import REPO, run_tool
from tests.support.dockerfile_parser import DOCKERFILE, Dockerfile, parse_dockerfile

DOCKERIGNORE = REPO / ".dockerignore"
UID = 10001

# Known-bad Dockerfiles: each linter must flag them, so a missing binary or a silent pass cannot go unnoticed.
BAD_FOR_HADOLINT = "FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n"
BAD_FOR_CHECKOV = 'FROM ubuntu:24.04\nRUN echo "no USER, no HEALTHCHECK"\n'


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- linters -------------------------------------------------------------------------------------------


def _hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint's exit status and its findings at warning level or above."""
    proc = run_tool("hadolint", "--failure-threshold", "warning", "--format", "json", str(path))
    findings = json.loads(proc.stdout or "[]")
    return proc.returncode, [f for f in findings if f["level"] in ("warning", "error")]


def test_hadolint_finds_nothing_at_warning_or_above() -> None:
    returncode, findings = _hadolint(DOCKERFILE)
    shown = "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert not findings, f"hadolint:\n{shown}"
    assert returncode == 0


def test_hadolint_flags_a_known_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_FOR_HADOLINT)
    returncode, findings = _hadolint(bad)
    assert {"DL3007", "DL3008"} <= {f["code"] for f in findings}, findings  # :latest, unpinned apt package
    assert returncode != 0


def _checkov(path: Path) -> dict[str, Any]:
    """checkov's dockerfile report for one file (checkov prints a dict for one framework, a list for several)."""
    proc = run_tool(
        "checkov",
        *("--framework", "dockerfile", "-f", str(path), "--skip-download"),
        *("--output", "json", "--compact", "--quiet"),
        timeout=240,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    data = json.loads(proc.stdout)
    reports = [r for r in (data if isinstance(data, list) else [data]) if r.get("check_type") == "dockerfile"]
    assert len(reports) == 1, data
    report: dict[str, Any] = reports[0]
    report["returncode"] = proc.returncode
    return report


def test_checkov_has_no_failed_check_and_every_skip_is_justified() -> None:
    report = _checkov(DOCKERFILE)
    failed = report["results"].get("failed_checks", [])
    shown = "\n".join(f"{c['check_id']} {c['check_name']} (lines {c['file_line_range']})" for c in failed)
    assert not failed, f"checkov:\n{shown}"
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0, report["summary"]
    assert report["returncode"] == 0
    skips = re.findall(r"#\s*checkov:skip=(CKV\w+)(?::(.*))?", DOCKERFILE.read_text())
    assert report["summary"]["skipped"] == len(skips)
    for check_id, reason in skips:
        assert reason and len(reason.strip()) > 20, f"{check_id} is skipped without a justification"


def test_checkov_flags_a_dockerfile_without_user_or_healthcheck(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_FOR_CHECKOV)
    report = _checkov(bad)
    failed = {c["check_id"] for c in report["results"].get("failed_checks", [])}
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3"} <= failed, failed  # HEALTHCHECK, USER
    assert report["returncode"] != 0


# --- what the image promises ---------------------------------------------------------------------------


def test_the_final_stage_runs_as_the_fixed_non_root_uid(dockerfile: Dockerfile) -> None:
    user, _, group = dockerfile.final.last("USER").partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user == str(UID), f"USER {user}: must be the numeric UID {UID}"
    assert group in ("", str(UID)), f"USER {user}:{group}: the group must be the numeric GID {UID}"


def test_the_entrypoint_is_the_local_serve_command_on_port_8000(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    assert json.loads(final.last("ENTRYPOINT")) == ["qwen-chat", "serve"]
    assert [json.loads(cmd) for cmd in final.all("CMD")][-1:] in ([], [[]]), "CMD adds no arguments"
    assert "8000" in {port.split("/")[0] for args in final.all("EXPOSE") for port in args.split()}
    assert "/livez" in final.last("HEALTHCHECK")


def test_the_default_base_is_a_pinned_cuda_runtime_image_that_a_build_arg_switches(
    dockerfile: Dockerfile,
) -> None:
    base_arg = re.fullmatch(r"\$\{?(\w+)\}?", dockerfile.final.base)
    assert base_arg, f"the final stage must start FROM a build ARG, not {dockerfile.final.base}"
    default = dockerfile.global_args.get(base_arg[1], "")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", default), default
    # The builder runs on the same base, so the wheels it picks match the runtime's glibc.
    builder = dockerfile.stages[-2]
    assert builder.base == dockerfile.final.base
    # Every FROM, ARGs expanded, is an earlier stage or an image pinned by a version tag (what checkov's
    # CKV_DOCKER_7 would check if it expanded ARGs).
    names: set[str] = set()
    for stage in dockerfile.stages:
        image = dockerfile.expand(stage.base)
        if image not in names:
            tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
            assert re.fullmatch(r"v?\d+(\.\d+)+[\w.-]*", tag), f"FROM {image}: pin a version tag"
        names.add(stage.name or "")


def test_torch_matches_the_base_cuda_and_the_local_pin(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stages[-2]
    args = {k: v for k, _, v in (a.partition("=") for a in builder.all("ARG"))}
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", dockerfile.global_args["BASE_IMAGE"])
    assert cuda, dockerfile.global_args["BASE_IMAGE"]
    assert args["TORCH_INDEX"] == f"https://download.pytorch.org/whl/cu{cuda[1]}{cuda[2]}"
    pin = re.search(r"^torch==(\S+)", (REPO / "constraints-cpu.txt").read_text(), re.MULTILINE)
    assert pin and args["TORCH_VERSION"] == pin[1], "TORCH_VERSION must follow constraints-cpu.txt"


def test_the_build_commands_and_writable_paths_are_documented(dockerfile: Dockerfile) -> None:
    header = DOCKERFILE.read_text().split("\n\n")[0]
    assert "docker build -f docker/Dockerfile" in header
    assert "--build-arg BASE_IMAGE=ubuntu:" in header
    assert "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu" in header
    env = dockerfile.final.env()
    assert env["HF_HOME"] and env["HF_HOME"] in header, "HF_HOME must be named at the top (volume mount)"
    assert "/tmp" in header and "QWEN_CHAT_STATE_DIR" in header
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert "HF_HUB_OFFLINE" not in env


def test_the_runtime_copies_python_and_the_venv_to_the_same_paths(dockerfile: Dockerfile) -> None:
    """The venv's interpreter symlinks are absolute: /opt/python and /opt/venv must not move."""
    copies = {tuple(args.split()) for args in dockerfile.final.all("COPY")}
    builder = dockerfile.stages[-2].name
    for path in ("/opt/python", "/opt/venv"):
        assert (f"--from={builder}", path, path) in copies, copies


# --- .dockerignore -------------------------------------------------------------------------------------


def _ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, regex) per .dockerignore line, with Docker's (moby patternmatcher) syntax."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def ignored(path: str, text: str) -> bool:
    """Whether Docker leaves `path` out of the context: the last rule matching it or a parent folder wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in _ignore_rules(text):
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        ("service", "service/qwen_chat/cli.py", True),
        ("*.md", "README.md", True),
        ("*\n!README.md", "README.md", False),
        ("*\n!service/\n**/__pycache__", "service/qwen_chat/__pycache__/cli.cpython-311.pyc", True),
        ("**/*.toml", "pyproject.toml", True),
        ("docs/*.png", "docs/chat-page.png", True),
        ("docs/*.png", "service/docs/a.png", False),
    ],
)
def test_the_dockerignore_checker_follows_docker_rules(rules: str, path: str, expected: bool) -> None:
    assert ignored(path, rules) is expected


def test_the_dockerignore_keeps_what_the_wheel_needs_and_little_else() -> None:
    text = DOCKERIGNORE.read_text()
    needed = ["pyproject.toml", "README.md"] + [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "service").rglob("*")
        if p.is_file() and not {"__pycache__", "build"} & set(p.parts) and ".egg-info" not in str(p)
    ]
    assert "service/qwen_chat/cli.py" in needed and "service/qwen_chat/static/index.html" in needed
    assert [p for p in needed if ignored(p, text)] == []
    heavy = [
        ".git/HEAD",
        ".venv/bin/python",
        ".tools/bin/hadolint",
        "test-output/page.png",
        "bench/results/2026-11-23-vm-startup.json",
        "docs/chat-page.png",
        "tests/conftest.py",
        ".mypy_cache/3.11/x.json",
        "service/qwen_chat/__pycache__/app.cpython-311.pyc",
    ]
    assert [p for p in heavy if not ignored(p, text)] == []
    # BuildKit prefers docker/Dockerfile.dockerignore over the root file: there must be none.
    assert not (REPO / "docker" / "Dockerfile.dockerignore").exists()
