"""The package's rooms: each imports only from rooms below it, no module outgrows 300 lines, and everything
but the engines' own modules loads without torch (so transports, and this unit lane, stay light)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import qwen_chat

PACKAGE = Path(qwen_chat.__file__).parent

# Lower ranks are imported by higher ones, never the other way round; a room may import itself. The
# foundation's modules are rooms of their own, so that their order holds too.
RANKS = {
    "errors": 0,  # the error vocabulary
    "sampling_params": 1,
    "metrics": 1,
    "settings": 2,
    "engine": 3,
    "auth": 3,
    "runtime": 4,
    "tracing": 5,  # OpenTelemetry: the provider (it redacts as the logs do) and a reply's spans
    "chat": 6,
    "service": 7,  # service.py: the typed Service the transports receive
    "ws": 8,
    "http": 8,
    "top": 9,  # app.py (the composition root), cli.py, smoke_test.py, the package itself
}
TOP = {"app", "cli", "smoke_test", "__main__", "__init__"}


def room_of(module: str) -> str:
    parts = module.split(".")[1:]  # without "qwen_chat"
    if not parts or parts[0] in TOP:
        return "top"
    assert parts[0] in RANKS, f"{module} is in no room: add it to a room folder or to RANKS"
    return parts[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every qwen_chat module (or package) `source` imports, at the top, in functions or under
    TYPE_CHECKING, absolute or relative."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "qwen_chat"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target == "qwen_chat" or (node.level and not node.module):
                found |= {f"{target}.{alias.name}" for alias in node.names}
            elif target.startswith("qwen_chat."):
                found.add(target)
    return found


def test_rooms_import_only_from_rooms_below() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            if room_of(target) != room_of(source) and RANKS[room_of(target)] >= RANKS[room_of(source)]:
                upward.append(f"{source} ({room_of(source)}) imports {target} ({room_of(target)})")
    assert upward == []


def test_the_import_reader_sees_relative_and_package_imports() -> None:
    source = (
        "from ..chat import stream\nfrom . import batch\nimport qwen_chat\nfrom qwen_chat import errors\n"
    )
    assert imports_of(source, "qwen_chat.engine.probe", is_package=False) == {
        "qwen_chat.chat",
        "qwen_chat.engine.batch",
        "qwen_chat",
        "qwen_chat.errors",
    }


def test_sibling_engines_do_not_depend_on_each_other() -> None:
    engines = {"qwen_chat.engine.batch", "qwen_chat.engine.simple"}
    for engine in engines:
        path = PACKAGE / "engine" / f"{engine.rsplit('.', 1)[1]}.py"
        assert imported_modules(path) & engines == set(), engine


def test_no_module_is_over_300_lines() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}


def test_transports_service_and_runtime_load_without_torch() -> None:
    light = [
        "qwen_chat.service",
        "qwen_chat.ws.router",
        "qwen_chat.http.openai_api",
        "qwen_chat.http.openai_chat",
        "qwen_chat.http.openai_completions",
        "qwen_chat.http.seed_api",
        "qwen_chat.http.page",
        "qwen_chat.http.probes",
        "qwen_chat.runtime.worker",
        "qwen_chat.engine.kv_cache",
        "qwen_chat.engine.prompts",
        "qwen_chat.engine.detokenizer",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {light!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
