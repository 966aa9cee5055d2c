"""The sampling a checkpoint recommends: the values of its `generation_config.json` that become the server's
defaults where the operator set none (`sampling_params.SamplingDefaults`), as vLLM's `--generation-config`.

QWEN_CHAT_GENERATION_CONFIG says where they come from: `auto`, the checkpoint the engine loads (a Qwen v1
checkpoint's conversion carries the original's values); `service`, nowhere (the service's own defaults); a
folder, its `generation_config.json`. Read in the worker, without torch, once the engine has loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from qwen_chat.sampling_params import SamplingDefaults, checkpoint_values
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

FILE = "generation_config.json"


def read_generation_config(folder: str) -> dict[str, object]:
    """A checkpoint's generation_config.json ({} when it has none); `folder` may be a hub id in the cache."""
    found: str | None = str(Path(folder) / FILE)
    if not Path(folder).is_dir():
        from transformers.utils.hub import cached_file  # a hub id: the file in the cache (or downloaded)

        found = cached_file(folder, FILE, _raise_exceptions_for_missing_entries=False)
    if found is None or not Path(found).is_file():
        return {}
    data = json.loads(Path(found).read_text())
    return data if isinstance(data, dict) else {}


def sampling_defaults(settings: Settings, checkpoint_path: str | None = None) -> SamplingDefaults:
    """The defaults in force: the operator's settings over the checkpoint's values over the service's.
    `checkpoint_path`: where MODEL loads from (a Qwen v1 checkpoint's conversion), found when not given."""
    mode = settings.generation_config
    if checkpoint_path is None and mode == "auto":
        from qwen_chat.engine.model.tokenizer import checkpoint

        checkpoint_path = checkpoint(settings).path
    if mode == "service":
        return SamplingDefaults.merge(settings)
    folder = str(checkpoint_path) if mode == "auto" else mode
    taken, refused = checkpoint_values(read_generation_config(folder))
    if refused:
        log.warning("generation_config_values_ignored", folder=folder, values=refused, reason="out of range")
    defaults = SamplingDefaults.merge(settings, taken)
    log.info("sampling_defaults", **defaults.shown())
    return defaults
