"""The package's rooms: each imports only from rooms below it, no module outgrows 300 lines, and everything
but the engines' own modules loads without torch (so transports, and this unit lane, stay light)."""

from __future__ import annotations

import ast
import re
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
    "logging_setup": 1,  # one log format, for the workers and the engine process
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
# The engine's own rooms, ranked the same way: what the worker runs (`api`) over the core it runs, over the
# model's files and text; `tiny` builds models and is imported by nothing else in the engine.
ENGINE_RANKS = {
    "__init__": 0,
    "wire": 0,  # the messages between the worker and its core
    "block_events": 0,  # what a core's cache stores and removes, to the pod's KV-event publisher
    "grammar_spec": 0,
    "hf_internals": 0,  # the one module that touches transformers' internals
    "model": 1,
    "tiny": 2,
    "core": 2,
    "api": 3,
}


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


def engine_room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["qwen_chat", "engine"]:
        return None
    room = parts[2] if len(parts) > 2 else "__init__"
    assert room in ENGINE_RANKS, f"{module} is in no room of the engine: add it to a room or to ENGINE_RANKS"
    return room


def test_the_engines_rooms_import_only_from_rooms_below() -> None:
    upward = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            here, there = engine_room_of(source), engine_room_of(target)
            if there is not None and here != there and ENGINE_RANKS[there] >= ENGINE_RANKS[here]:  # type: ignore[index]
                upward.append(f"{source} ({here}) imports {target} ({there})")
    assert upward == []


def test_no_module_imports_itself_back() -> None:
    """No import cycle among the package's modules, `from package import submodule` read as the submodule,
    lazy and TYPE_CHECKING imports included: each module can be read, and moved, after what it imports."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {module: import_edges(path, set(paths)) for module, path in paths.items()}
    assert cycles(graph) == []


def import_edges(path: Path, modules: set[str]) -> set[str]:
    """The modules `path` imports: `from a.b import c` is `a.b.c` where that is a module, else `a.b`."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
    return found - {module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, set()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# transformers' internals: the modules, and the attributes of its batching manager, that only the adapter
# (`engine/hf_internals/`) may name.
INTERNAL_MODULES = re.compile(
    r"transformers\.(generation\.continuous_batching|integrations|convert_slow_tokenizer|tokenization_utils)"
)
INTERNAL_NAMES = re.compile(
    r"\.(_generation_step|_generation_loop_body|output_router|logit_processor|batch_processor|offloading_manager"
    r"|offload_requests|cache_allocators|block_table|bytes_per_block|num_sectors|bytes_per_sector"
    r"|background_thread_status|inputs_and_outputs|swap_io_pairs|update_batch|model_runner|current_batch"
    r"|use_cuda_graph_varlen|use_cuda_graph_decode|_wake_up_loop)\b|\bAttentionInterface\b"
)


def test_only_the_adapter_names_transformers_internals() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "hf_internals":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if INTERNAL_MODULES.search(code) or INTERNAL_NAMES.search(code):
                found.append(f"{module_name(path)}:{number}: {line.strip()}")
    assert found == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


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
    engines = {"qwen_chat.engine.core.batch", "qwen_chat.engine.core.simple"}
    for engine in engines:
        path = PACKAGE / "engine" / "core" / f"{engine.rsplit('.', 1)[1]}.py"
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
        "qwen_chat.engine.core.kv_cache",
        "qwen_chat.engine.model.prompts",
        "qwen_chat.engine.model.tokenizer",
        "qwen_chat.engine.api.detokenizer",
        # the worker's engine: the core in its child process, the tokenizer here
        "qwen_chat.engine.api.process",
        "qwen_chat.app",
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
