"""The router configuration docs/scale-out.md gives for the precise prefix-cache scorer agrees with the
chart it routes to: the events port, the served model, the Service, a block size the pods' pages divide
into, and a plugin chain whose every reference names a plugin it declares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from qwen_chat.engine.core.kv_cache import cache_geometry
from qwen_chat.runtime.kv_events import topic
from qwen_chat.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _precise_config() -> tuple[dict[str, Any], dict[str, Any]]:
    text = (REPO / "docs" / "scale-out.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (values,) = [yaml.safe_load(block) for block in blocks if "precise-prefix.yaml" in block]
    epp = values["router"]["epp"]
    return epp, yaml.safe_load(epp["pluginsCustomConfig"][epp["pluginsConfigFile"]])


def test_the_precise_scorer_config_matches_the_chart() -> None:
    chart = yaml.safe_load((REPO / "charts" / "qwen-chat" / "values.yaml").read_text())
    _, config = _precise_config()
    plugins = {plugin["type"]: plugin.get("parameters", {}) for plugin in config["plugins"]}
    events = plugins["precise-prefix-cache-producer"]["kvEventsConfig"]
    assert events["podDiscoveryConfig"]["socketPort"] == chart["kvEvents"]["port"]
    assert topic(Settings(served_model_name="m")).startswith(events["topicFilter"])
    block = plugins["precise-prefix-cache-producer"]["tokenProcessorConfig"]["blockSizeTokens"]
    gpu_page = cache_geometry(Settings(), 32768, 8192, "cuda").page_size
    assert block == gpu_page, "the router's blocks are the pods' pages (older llm-d needs them equal)"
    producer = plugins["token-producer"]
    assert producer["modelName"] == chart["model"]["name"]
    assert producer["vllm"]["url"].endswith(f":{chart['service']['port']}")
    assert plugins["prefix-cache-scorer"]["prefixMatchInfoProducerName"] == "precise-prefix-cache-producer"


def test_every_reference_of_the_precise_scorer_config_names_a_declared_plugin() -> None:
    _, config = _precise_config()
    declared = {plugin.get("name", plugin["type"]) for plugin in config["plugins"]}
    profile_refs = {p["pluginRef"] for profile in config["schedulingProfiles"] for p in profile["plugins"]}
    data_refs = {source["pluginRef"] for source in config["dataLayer"]["sources"]}
    data_refs |= {e["pluginRef"] for source in config["dataLayer"]["sources"] for e in source["extractors"]}
    assert profile_refs | data_refs <= declared
    assert "prefix-cache-scorer" in profile_refs and "queue-scorer" in profile_refs
