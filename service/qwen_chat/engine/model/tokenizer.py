"""A checkpoint's tokenizer, loaded without torch, so a worker that only tokenizes and renders chat templates
does not import it.

`AutoTokenizer` picks the tokenizer's class through transformers' config module, which imports torch (about
2 s and 200 MiB per worker on this machine). The engine's core loads the checkpoint with `AutoTokenizer`
anyway, and reports the class it got (`ModelFacts.tokenizer_class`); the worker loads that same class, which
imports without torch. `tests/test_model_families.py` holds the two to the same ids for every family.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from qwen_chat.engine.model.families import Checkpoint, resolve
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)


def checkpoint(settings: Settings) -> Checkpoint:
    """Where MODEL loads from (a Qwen v1 checkpoint converted first); raises for a family not served."""
    return resolve(settings.model, settings.conversion_cache_dir)


def load_tokenizer(settings: Settings, tokenizer_class: str = "") -> Any:
    """The checkpoint's tokenizer; of `tokenizer_class` (`module:name`, what the core's `AutoTokenizer` gave)
    when given, which loads without torch."""
    return tokenizer_at(checkpoint(settings).path, tokenizer_class)


def tokenizer_at(path: str, tokenizer_class: str = "") -> Any:
    import importlib

    import transformers  # here: importing this module stays light (the transports import it)

    module, _, name = tokenizer_class.partition(":")
    if module.split(".")[0] == "transformers" and name:
        found = getattr(importlib.import_module(module), name, None)
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedTokenizerBase):
            return found.from_pretrained(path)
    log.warning(
        "tokenizer_through_autotokenizer", tokenizer_class=tokenizer_class or None, effect="imports torch"
    )
    return transformers.AutoTokenizer.from_pretrained(path)


def named_class(settings: Settings) -> str:
    """The tokenizer class the checkpoint's `tokenizer_config.json` names, as `module:name`, when it is one of
    transformers' own (`Qwen2Tokenizer` on Qwen's checkpoints; `AutoTokenizer` may still pick another by
    the model's type, so this is a guess to load ahead, checked against the engine process's answer)."""
    import importlib

    from transformers.utils.hub import cached_file

    config = cached_file(
        checkpoint(settings).path, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False
    )
    if config is None:
        return ""
    with open(config, encoding="utf-8") as file:
        named = json.load(file).get("tokenizer_class")
    found = getattr(importlib.import_module("transformers"), named, None) if isinstance(named, str) else None
    return f"{found.__module__}:{found.__qualname__}" if isinstance(found, type) else ""


def class_path(tokenizer: Any) -> str:
    """`module:name` of a tokenizer's class, as `load_tokenizer` takes it."""
    return f"{type(tokenizer).__module__}:{type(tokenizer).__qualname__}"
