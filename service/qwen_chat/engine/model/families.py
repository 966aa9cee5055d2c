"""The model families the service serves, and where each checkpoint is loaded from.

Qwen2/2.5 (`qwen2`) and Qwen3 (`qwen3`) load as they are. Qwen v1 (`qwen`) is converted to Qwen2 once, into
the conversion cache (`qwen_v1/`), and loads from there: no remote code runs. Anything else stops the start
with the reason, before any weights are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SERVED = {
    "qwen": "Qwen v1 (Qwen-1_8B-Chat, Qwen-7B-Chat)",
    "qwen2": "Qwen2 and Qwen2.5",
    "qwen3": "Qwen3",
}
# What a hub download of a Qwen v1 checkpoint needs (its remote code is not among it).
_QWEN_V1_FILES = ["*.json", "qwen.tiktoken", "*.safetensors"]


class UnsupportedModel(ValueError):
    """The checkpoint is of a family the service does not serve."""


@dataclass(frozen=True)
class Checkpoint:
    path: str  # what `from_pretrained` loads: the model as given, or its converted folder
    family: str  # the source's model_type


def is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().is_dir()


def _read_config(model: str) -> dict[str, object]:
    if is_local(model):
        path = Path(model).expanduser() / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: is {model} a model folder?")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model, "config.json"))
    config: dict[str, object] = json.loads(path.read_text())
    return config


def _local_copy(model: str) -> Path:
    if is_local(model):
        return Path(model).expanduser()
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(model, allow_patterns=_QWEN_V1_FILES))
    if not any(folder.glob("*.safetensors")):  # an old revision with pickled weights only
        folder = Path(snapshot_download(model, allow_patterns=["*.json", "qwen.tiktoken", "*.bin"]))
    return folder


@lru_cache
def resolve(model: str, conversion_cache: Path) -> Checkpoint:
    """Where `model` loads from, converting a Qwen v1 checkpoint first; raises `UnsupportedModel`."""
    config = _read_config(model)
    family = str(config.get("model_type", ""))
    if family not in SERVED:
        architectures = ", ".join(map(str, config.get("architectures") or [])) or "no architectures"  # type: ignore[call-overload]
        served = "; ".join(f"{name} ({what})" for name, what in SERVED.items())
        raise UnsupportedModel(
            f"model_type {family!r} ({architectures}) is not served; qwen-chat serves {served}"
        )
    if family != "qwen":
        return Checkpoint(model, family)
    from qwen_chat.engine.model.qwen_v1.convert import ensure_converted

    return Checkpoint(str(ensure_converted(_local_copy(model), conversion_cache)), family)
