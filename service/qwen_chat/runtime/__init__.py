"""The process runtime: how `qwen-chat serve` runs the app.

- `gunicorn_conf.py`: the gunicorn config module (every value from Settings), the master's hooks
- `worker.py`: the gunicorn worker: uvicorn with this service's WebSocket protocol, the SIGTERM drain and
  the exit that stops the service when the model cannot load
- `lifecycle.py`: what the app and the worker tell each other (its drain, a failed load), without imports
- `readiness.py`, `drain.py`: /readyz across a pod's workers; graceful shutdown of one worker
- `state_dir.py`: the layout of STATE_DIR, the folder a pod's workers share
- `dev.py`: `serve --dev`

The log format (`qwen_chat/logging_setup.py`) and the engine process's `main` (`engine/core/child.py`) live
in the rooms below, which the engine process imports too.
"""
