"""Convert a Qwen v1 checkpoint folder into a `Qwen2ForCausalLM` one, once, into the conversion cache.

The converted folder is named for its source (path, file names, sizes and modification times), so a changed
checkpoint converts again and an unchanged one loads at once. A lock file keeps workers of one pod from
converting it twice; the finished folder appears by an atomic rename, so nobody ever reads half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qwen_chat.engine.model.qwen_v1.tokenizer import STOP_TOKENS, VOCAB_FILE, build_tokenizer
from qwen_chat.engine.model.qwen_v1.weights import convert_tensors, qwen2_config
from qwen_chat.sampling_params import CHECKPOINT_FIELDS

log = structlog.get_logger(__name__)

# Bumped whenever the output changes, so that older conversions are not reused.
CONVERTER_VERSION = 2  # 2: generation_config.json keeps the original's sampling values
MARKER = "qwen_chat_conversion.json"


def converted_path(source: Path, cache: Path) -> Path:
    files = sorted(p for p in source.iterdir() if p.is_file())
    stamp = [(p.name, stat.st_size, stat.st_mtime_ns) for p in files for stat in [p.stat()]]
    digest = hashlib.sha256(
        json.dumps([CONVERTER_VERSION, str(source.resolve()), stamp]).encode()
    ).hexdigest()
    return cache / f"{source.resolve().name}-qwen2-{digest[:16]}"


def ensure_converted(source: Path, cache: Path) -> Path:
    """The converted folder for `source`, converting it first when the cache has none."""
    target = converted_path(source, cache)
    if (target / MARKER).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be converting it: wait for it
        if not (target / MARKER).exists():
            _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    started = time.monotonic()
    log.info("qwen_v1_converting", source=str(source), target=str(target))
    config = json.loads((source / "config.json").read_text())
    vocab_file = source / VOCAB_FILE
    if not vocab_file.exists():
        raise FileNotFoundError(f"a Qwen v1 checkpoint needs its {VOCAB_FILE}, and {source} has none")
    context = int(config.get("seq_length") or config.get("max_position_embeddings") or 2048)
    tokenizer = build_tokenizer(vocab_file, context)
    stop_ids = [int(tokenizer.convert_tokens_to_ids(token)) for token in STOP_TOKENS]  # type: ignore[arg-type]
    values = qwen2_config(config, len(tokenizer), stop_ids, tokenizer.pad_token_id)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_weights(source, work, values["hidden_size"], len(tokenizer))
        (work / "config.json").write_text(json.dumps(values, indent=2))
        generation = {
            **_sampling(source),  # what the original's card recommends: the server's defaults (auto)
            "eos_token_id": stop_ids,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
        }
        (work / "generation_config.json").write_text(json.dumps(generation, indent=2))
        tokenizer.save_pretrained(work)
        marker = {"source": str(source.resolve()), "converter_version": CONVERTER_VERSION, "from": "qwen"}
        (work / MARKER).write_text(json.dumps(marker, indent=2))
        try:
            work.rename(target)
        except OSError:  # another pod sharing the cache finished first: use theirs
            if not (target / MARKER).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("qwen_v1_converted", target=str(target), seconds=round(time.monotonic() - started, 1))


def _shards(source: Path) -> list[Path]:
    shards = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not shards:
        raise FileNotFoundError(f"{source} holds no *.safetensors or pytorch_model*.bin weights")
    return shards


def _read(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if shard.suffix == ".safetensors":
        with safe_open(str(shard), framework="pt") as reader:
            for name in reader.keys():  # noqa: SIM118 (a safetensors reader is no dict)
                yield name, reader.get_tensor(name)
    else:
        yield from torch.load(shard, map_location="cpu", weights_only=True, mmap=True).items()


def _write_weights(source: Path, work: Path, hidden: int, vocab_size: int) -> None:
    """One output shard per input shard, so memory holds one shard at a time."""
    shards = _shards(source)
    index: dict[str, Any] = {"metadata": {}, "weight_map": {}}
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = dict(convert_tensors(_read(shard), hidden, vocab_size))
        save_file(tensors, str(work / name), metadata={"format": "pt"})
        index["weight_map"].update(dict.fromkeys(tensors, name))
        del tensors
    if len(shards) == 1:
        (work / name).rename(work / "model.safetensors")
    else:
        (work / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _sampling(source: Path) -> dict[str, object]:
    """The original generation_config.json's sampling values (Qwen-7B-Chat's: top_p 0.8, top_k 0,
    repetition_penalty 1.1), with its `do_sample` (without it transformers warns on every load that they are
    unused)."""
    original = source / "generation_config.json"
    config = json.loads(original.read_text()) if original.exists() else {}
    names = (*CHECKPOINT_FIELDS, "do_sample")
    return {name: config[name] for name in names if config.get(name) is not None}
