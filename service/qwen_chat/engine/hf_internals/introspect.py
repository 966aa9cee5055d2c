"""What an object or a class has: the checks `hf_internals` runs against the installed transformers, kept
apart because they name nothing of it."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any


def takes(method: Any, parameters: list[str]) -> bool:
    """`method` takes `parameters`, and any others have defaults (our wrappers pass just those)."""
    if method is None:
        return False
    found = list(inspect.signature(method).parameters.values())
    extra = found[len(parameters) :]
    named = [p.name for p in found[: len(parameters)]]
    optional = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return named == parameters and all(p.default is not p.empty or p.kind in optional for p in extra)


def fields(cls: Any) -> set[str]:
    """What an instance of `cls` has: its dataclass fields, slots, annotations and attributes."""
    if cls is None:
        return set()
    found = set(dir(cls)) | set(getattr(cls, "__slots__", ()))
    if dataclasses.is_dataclass(cls):
        found |= {field.name for field in dataclasses.fields(cls)}
    for klass in cls.__mro__:
        found |= set(getattr(klass, "__annotations__", {}))
    return found


def has_path(root: Any, path: str) -> bool:
    """`root.a.b.c` exists, for the path "a.b.c"."""
    value = root
    for part in path.split("."):
        if not hasattr(value, part):
            return False
        value = getattr(value, part)
    return True
