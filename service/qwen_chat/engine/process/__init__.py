"""The engine core in a child process of its own (QWEN_CHAT_ENGINE_PROCESS=true, the default).

- `client.py`: `ProcessEngine`, the worker's side: spawns the child, sends it requests, turns its steps into
  events, and replaces it when it dies
- `channel.py`: the two pipes between them, one length-prefixed msgpack message per frame

The child's `main` is a process runtime, so it lives in `runtime/engine_process.py`: it loads the model, runs
a core and exits when its parent is gone.

The child imports torch; the worker side needs only the tokenizer.
"""
