"""The model families the service serves, and where each checkpoint is loaded from.

Qwen2/2.5 (`qwen2`), Qwen3 (`qwen3`) and their mixture-of-experts kin (`qwen2_moe`, `qwen3_moe`: the same
attention, a sparse MLP) load as they are. Qwen v1 (`qwen`) is converted to Qwen2 once, into
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
    "qwen2_moe": "Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B)",
    "qwen3_moe": "Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder)",
    "qwen3_5": "Qwen3.5 and Qwen3.6 dense (Qwen3.5-0.8B to 27B; the released checkpoints' language model)",
    "qwen3_5_moe": "Qwen3.5 and Qwen3.6 MoE (Qwen3.5-35B-A3B, 122B-A10B, 397B-A17B, Qwen3.6-35B-A3B)",
    "qwen3_next": "Qwen3-Next (Qwen3-Next-80B-A3B)",
    "qwen3_5_text": "a Qwen3.5 language model saved alone",
    "qwen3_5_moe_text": "a Qwen3.5-MoE language model saved alone",
}
# Hybrids (Gated DeltaNet linear attention with full attention among it): served by the hybrid core.
HYBRID = frozenset({"qwen3_5", "qwen3_5_moe", "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"})
# Released Qwen3.5/3.6 checkpoints are image-text models: their language model is what is served.
_LANGUAGE_MODEL_OF = ("ForCausalLM", "ForConditionalGeneration")
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


# What sentence-transformers writes beside an embedding model (Qwen3-Embedding): its pooling, no LM head used.
_EMBEDDING_FILES = ("modules.json", "config_sentence_transformers.json")


def _refuse_if_not_a_chat_model(model: str, config: dict[str, object], family: str) -> None:
    """A checkpoint of a served family that is not a causal LM (a bare `Qwen3Model`, an embedding model with
    its pooling config) has no reply to give: say so at start instead of serving nonsense."""
    architectures = [str(name) for name in config.get("architectures") or []]  # type: ignore[attr-defined]
    if architectures and not any(name.endswith(_LANGUAGE_MODEL_OF) for name in architectures):
        raise UnsupportedModel(
            f"{model} is a {family} checkpoint without a language-model head ({', '.join(architectures)}): "
            "an embedding or classification model, not a chat model"
        )
    if is_local(model) and any((Path(model).expanduser() / name).exists() for name in _EMBEDDING_FILES):
        raise UnsupportedModel(
            f"{model} is an embedding model (its sentence-transformers pooling config is there), not a chat "
            "model; serve it with an embedding server"
        )


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
        _refuse_if_not_a_chat_model(model, config, family)
        return Checkpoint(model, family)
    from qwen_chat.engine.model.qwen_v1.convert import ensure_converted

    return Checkpoint(str(ensure_converted(_local_copy(model), conversion_cache)), family)
