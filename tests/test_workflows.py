"""The GitHub Actions workflows in .github/workflows: schema, zizmor (offline) and the repository's own rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart_tools import REPO, run_tool

GITHUB = REPO / ".github"
WORKFLOWS = GITHUB / "workflows"
ZIZMOR_CONFIG = GITHUB / "zizmor.yml"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
EXPECTED = {"chart.yml", "image.yml", "lint.yml", "tests.yml"}

# owner/repo, an optional path inside it, then a full 40-hex commit SHA.
PINNED_USES = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[^@\s]+)?@[0-9a-f]{40}$")
# The same, as written on a line, with the version in a trailing comment: `uses: a/b@<sha> # v1.2.3`.
USES_LINE = re.compile(r"^\s*(-\s+)?uses:\s+(?P<ref>\S+)(\s+#\s+(?P<version>v\d+\.\d+\.\d+))?\s*$")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def workflow(name: str) -> dict[str, Any]:
    return load(WORKFLOWS / name)


def triggers(wf: dict[str, Any]) -> dict[str, Any]:
    """`on:`, which YAML 1.1 (PyYAML) reads as the boolean True."""
    on = wf.get("on", wf.get(True))
    assert isinstance(on, dict), on
    return on


def jobs(wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = wf["jobs"]
    assert isinstance(result, dict) and result
    return result


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    result = job.get("steps", [])
    assert isinstance(result, list)
    return result


def runs(job: dict[str, Any]) -> list[str]:
    """Every `run:` of a job, with folded (`>-`) lines joined and whitespace collapsed."""
    return [" ".join(str(step["run"]).split()) for step in steps(job) if "run" in step]


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path.name, name, job) for path in WORKFLOW_FILES for name, job in jobs(load(path)).items()]


def readme_test_command() -> str:
    """The `make test` line of the README's first bash block, without its comment."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no bash block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    test = [command for command in commands if command.startswith("make test")]
    assert len(test) == 1, commands
    return test[0]


def test_the_four_workflows_exist() -> None:
    assert {path.name for path in WORKFLOW_FILES} == EXPECTED


def test_workflows_match_the_github_schema() -> None:
    result = run_tool(
        "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOW_FILES)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_config_matches_its_schema() -> None:
    result = run_tool(
        "check-jsonschema", "--builtin-schema", "vendor.dependabot", str(GITHUB / "dependabot.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def zizmor(target: Path) -> tuple[int, str]:
    result = run_tool(
        "zizmor", "--offline", "--no-progress", "--color=never", "--config", str(ZIZMOR_CONFIG), str(target)
    )
    return result.returncode, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    """Offline audits (the online ones need a GitHub token), the repository's config: every action hash-pinned."""
    returncode, output = zizmor(GITHUB)
    assert returncode == 0, output
    assert "No findings to report" in output, output


def test_zizmor_flags_an_unpinned_action(tmp_path: Path) -> None:
    """The check above can fail: a workflow with a tag-pinned checkout is reported."""
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "name: bad\n"
        "on: pull_request\n"
        "permissions:\n"
        "  contents: read\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-24.04\n"
        "    timeout-minutes: 5\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
    )
    returncode, output = zizmor(tmp_path / ".github")
    assert returncode != 0, output
    assert "unpinned-uses" in output, output

    result = run_tool(
        "zizmor", "--offline", "--no-progress", "--format", "json", "--config", str(ZIZMOR_CONFIG), str(bad)
    )
    findings = json.loads(result.stdout)
    assert "unpinned-uses" in {finding["ident"] for finding in findings}, result.stdout


def test_every_action_is_pinned_to_a_commit_sha() -> None:
    for path, name, job in all_jobs():
        if "uses" in job:  # a reusable workflow
            assert PINNED_USES.match(job["uses"]), (path, name, job["uses"])
        for step in steps(job):
            if "uses" in step:
                assert PINNED_USES.match(step["uses"]), (path, name, step["uses"])


def test_each_pin_names_its_version_and_each_action_has_one_pin() -> None:
    pins: dict[str, set[str]] = {}
    for path in WORKFLOW_FILES:
        for line in path.read_text().splitlines():
            if not re.match(r"^\s*(-\s+)?uses:", line):
                continue
            match = USES_LINE.match(line)
            assert match and match.group("version"), (
                f"{path.name}: no `# vX.Y.Z` after the SHA: {line.strip()}"
            )
            action, sha = match.group("ref").split("@")
            pins.setdefault(action, set()).add(f"{sha} {match.group('version')}")
    assert pins
    for action, versions in pins.items():
        assert len(versions) == 1, (action, versions)


def test_every_job_has_a_timeout() -> None:
    for path, name, job in all_jobs():
        timeout = job.get("timeout-minutes")
        assert isinstance(timeout, int) and 0 < timeout <= 120, (path, name, timeout)


def test_jobs_run_on_ubuntu_24_04_with_python_3_11() -> None:
    for path, name, job in all_jobs():
        assert job["runs-on"] == "ubuntu-24.04", (path, name)
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/setup-python@"):
                assert step["with"]["python-version"] == "3.11", (path, name)
        if "container" in job:
            assert str(job["container"]["image"]).startswith("python:3.11-"), (path, name)


def test_top_level_permissions_are_contents_read() -> None:
    for path in WORKFLOW_FILES:
        assert load(path)["permissions"] == {"contents": "read"}, path.name


def test_only_the_push_job_may_write() -> None:
    writers = []
    for path, name, job in all_jobs():
        permissions = job.get("permissions", {})
        assert isinstance(permissions, dict), (path, name, permissions)  # never read-all / write-all
        assert set(permissions.values()) <= {"read", "write", "none"}, (path, name, permissions)
        written = {scope for scope, access in permissions.items() if access == "write"}
        if written:
            writers.append((path, name, written))
    assert writers == [("image.yml", "push", {"packages"})]


def test_checkouts_do_not_persist_credentials() -> None:
    checkouts = 0
    for path, name, job in all_jobs():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                checkouts += 1
                assert step.get("with", {}).get("persist-credentials") is False, (path, name)
    assert checkouts >= len(EXPECTED)


def test_superseded_runs_are_cancelled() -> None:
    for path in WORKFLOW_FILES:
        concurrency = load(path)["concurrency"]
        assert "github.workflow" in concurrency["group"], path.name
        assert "github.ref" in concurrency["group"], path.name
        cancel = concurrency["cancel-in-progress"]
        assert cancel is True or (isinstance(cancel, str) and cancel.startswith("${{")), (path.name, cancel)


def test_tests_workflow_runs_the_readme_test_command_with_ci_true() -> None:
    command = readme_test_command()
    assert command == "make test"
    test_jobs = [job for job in jobs(workflow("tests.yml")).values() if command in runs(job)]
    assert len(test_jobs) == 1
    job = test_jobs[0]
    assert str(job.get("env", {}).get("CI")).lower() == "true"
    # `make test` installs Debian packages with apt-get, which needs root: the job runs in a Debian container.
    assert "bookworm" in job["container"]["image"]


def test_lint_workflow_runs_make_lint() -> None:
    assert any("make lint" in runs(job) for job in jobs(workflow("lint.yml")).values())


def test_chart_workflow_runs_on_chart_image_and_service_changes() -> None:
    on = triggers(workflow("chart.yml"))
    for event in ("push", "pull_request"):
        assert {"charts/**", "docker/**", "service/**"} <= set(on[event]["paths"]), event


def test_chart_workflow_runs_the_chart_tests_after_make_tools() -> None:
    static = jobs(workflow("chart.yml"))["static"]
    commands = runs(static)
    assert "make install tools" in commands
    pytest_runs = [
        index for index, run in enumerate(commands) if run.startswith(".venv/bin/python -m pytest")
    ]
    assert pytest_runs and "tests/test_chart.py" in commands[pytest_runs[0]]
    assert commands.index("make install tools") < pytest_runs[0]
    assert str(static.get("env", {}).get("CI")).lower() == "true"


def test_chart_workflow_installs_and_tests_the_chart_in_kind() -> None:
    kind = jobs(workflow("chart.yml"))["kind"]
    commands = " ; ".join(runs(kind))
    assert any(str(step.get("uses", "")).startswith("helm/kind-action@") for step in steps(kind))
    assert (
        "docker build -f docker/Dockerfile --build-arg BASE_IMAGE=ubuntu:24.04 "
        "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t qwen-chat:ci ." in commands
    )
    assert "kind load docker-image qwen-chat:ci" in commands
    install = next(run for run in runs(kind) if " install qwen-chat charts/qwen-chat" in run)
    for flag in (
        "-f charts/qwen-chat/ci/cpu-values.yaml",
        "--set image.repository=qwen-chat",
        "--set image.tag=ci",
        "--set image.pullPolicy=Never",
        "--wait",
        "--timeout 10m",
    ):
        assert flag in install, flag
    assert any(run.endswith("helm test qwen-chat --logs") for run in runs(kind))
    dump = [step for step in steps(kind) if step.get("if") == "failure()" and "run" in step]
    assert dump and "kubectl describe pods" in dump[0]["run"] and "kubectl logs" in dump[0]["run"]


def test_image_workflow_builds_everywhere_and_pushes_only_tags() -> None:
    wf = workflow("image.yml")
    on = triggers(wf)
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"] == ["v*"] and "pull_request" in on
    all_runs = [run for job in jobs(wf).values() for run in runs(job)]
    assert ".tools/bin/hadolint docker/Dockerfile" in all_runs

    build, push = jobs(wf)["build"], jobs(wf)["push"]
    assert "refs/tags/" in build["if"] and build["if"].replace(" ", "").startswith("${{!startsWith(")
    assert push["if"] == "startsWith(github.ref, 'refs/tags/v')"
    for name, job, pushes in (("build", build, False), ("push", push, True)):
        builds = [
            step for step in steps(job) if str(step.get("uses", "")).startswith("docker/build-push-action@")
        ]
        assert len(builds) == 1, name
        options = builds[0]["with"]
        assert options["push"] is pushes, name
        assert options["file"] == "docker/Dockerfile", name
        assert options["cache-from"].startswith("type=gha"), name
        assert options["cache-to"].startswith("type=gha,mode=max"), name
        assert any(str(s.get("uses", "")).startswith("docker/setup-buildx-action@") for s in steps(job)), name
        variants = {entry["variant"]: entry for entry in job["strategy"]["matrix"]["include"]}
        assert set(variants) == {"cuda", "cpu"}, name
        cpu_args = variants["cpu"]["build-args"].split()
        assert cpu_args == ["BASE_IMAGE=ubuntu:24.04", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"], (
            name
        )
    suffixes = {entry["variant"]: entry["suffix"] for entry in push["strategy"]["matrix"]["include"]}
    assert suffixes == {"cuda": "", "cpu": "-cpu"}

    login = next(s for s in steps(push) if str(s.get("uses", "")).startswith("docker/login-action@"))
    assert login["with"] == {
        "registry": "ghcr.io",
        "username": "${{ github.actor }}",
        "password": "${{ secrets.GITHUB_TOKEN }}",
    }
    assert any(str(s.get("uses", "")).startswith("docker/metadata-action@") for s in steps(push))
    assert not any(str(s.get("uses", "")).startswith("docker/login-action@") for s in steps(build))


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_no_expression_is_expanded_inside_a_run_script(path: Path) -> None:
    """`${{ }}` in `run:` is template injection waiting to happen; scripts read environment variables instead."""
    for name, job in jobs(load(path)).items():
        for step in steps(job):
            assert "${{" not in str(step.get("run", "")), (path.name, name, step.get("name"))
