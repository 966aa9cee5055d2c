"""The model as files and text: which families are served, how a checkpoint loads, and how a conversation
becomes prompt ids.

- `families.py`: the families served (Qwen2/2.5, Qwen3, Qwen v1) and where a checkpoint loads from
- `loader.py`: the model and tokenizer on their device, and the prompt budget; `tokenizer.py`: the tokenizer
  alone, without torch, for the worker
- `prompts.py`: chat templates, the budget and dropping old turns; `control_tokens.py`: a client's text stays
  text, only the template's structure becomes control tokens
- `qwen_v1/`: a Qwen v1 checkpoint converted to Qwen2 once, with its tokenizer rebuilt from `qwen.tiktoken`
"""
