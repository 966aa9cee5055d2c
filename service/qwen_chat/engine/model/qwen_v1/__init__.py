"""Qwen v1 (`model_type: qwen`, Qwen-1_8B/7B-Chat) served without remote code: its checkpoints are
converted to `Qwen2ForCausalLM` (`weights.py`) with a tokenizer rebuilt from `qwen.tiktoken`
(`tokenizer.py`), once, into the conversion cache (`convert.py`)."""
