"""The engine room: where tokens are generated.

- `interface.py`: the `Engine` protocol every transport talks to, and the values that cross it
- `queued.py`: what both engines share: loading, admission to MAX_RUNNING slots, the queue, cancellation
- `batch.py`: continuous batching on transformers' manager (the default); `kv_cache.py` sizes its slots and
  cache, `batch_sampler.py` samples every row of a step at once, `cpu_attention.py` attends per request on CPU
- `simple.py`: one `model.generate` per request, in threads (QWEN_CHAT_ENGINE=simple)
- `sampling.py`: the seeded per-request draw both engines share; `detokenizer.py`: token ids to text deltas
- `model_loader.py`, `prompts.py`: the model and tokenizer on their device; chat templates and the budget
- `tiny_model.py`: the offline random Qwen2 model for tests, demos and CI

Importing this package loads no torch; its engine modules do.
"""
