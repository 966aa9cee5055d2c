"""The engine room: where tokens are generated.

- `interface.py`: the `Engine` protocol every transport talks to, and the values that cross it
- `queued.py`: what both engines share: loading, admission to MAX_RUNNING slots, the queue, cancellation
- `batch.py`: continuous batching on transformers' manager (the default); `kv_cache.py` sizes its slots and
  cache, `batch_sampler.py` samples every row of a step at once, `cpu_attention.py` attends per request on CPU
- `simple.py`: one `model.generate` per request, in threads (QWEN_CHAT_ENGINE=simple)
- `sampling.py`: the seeded per-request draw both engines share; `detokenizer.py`: token ids to text deltas
- `model_loader.py`, `prompts.py`: the model and tokenizer on their device; chat templates and the budget;
  `control_tokens.py`: a client's text stays text, only the template's structure becomes control tokens
- `families.py`: the families served (Qwen2/2.5, Qwen3, Qwen v1) and where a checkpoint loads from;
  `qwen_v1/`: a Qwen v1 checkpoint converted to Qwen2 once, with its tokenizer rebuilt from `qwen.tiktoken`
- `tiny_model.py`, `tiny_qwen3.py`, `tiny_qwen_v1.py`: the offline random models for tests, demos and CI

Importing this package loads no torch; its engine modules do.
"""
