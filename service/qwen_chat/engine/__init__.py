"""The engine room: where tokens are generated.

- `interface.py`: the `Engine` protocol every transport talks to, and the values that cross it
- `queued.py`: what both engines share: loading, admission to MAX_RUNNING slots, the queue, cancellation
- `batch.py`: continuous batching on transformers' manager (the default); `kv_cache.py` sizes its cache
- `simple.py`: one `model.generate` per request, in threads (QWEN_CHAT_ENGINE=simple)
- `sampling.py`: seeded per-request sampling for both; `detokenizer.py`: token ids to text deltas
- `model_loader.py`, `prompts.py`: the model and tokenizer on their device; chat templates and the budget
- `tiny_model.py`: the offline random Qwen2 model for tests, demos and CI

Importing this package loads no torch; its engine modules do.
"""
