"""The process runtime: how `qwen-chat serve` runs the app.

- `gunicorn_conf.py`: the gunicorn config module (every value from Settings), the master's hooks
- `worker.py`: the gunicorn worker: uvicorn with this service's WebSocket protocol, the SIGTERM drain and
  the exit that stops the service when the model cannot load
- `lifecycle.py`: what the app and the worker tell each other (its drain, a failed load), without imports
- `readiness.py`, `drain.py`: /readyz across a pod's workers; graceful shutdown of one worker
- `state_dir.py`: the layout of STATE_DIR, the folder a pod's workers share
- `logging_setup.py`: one log format for the app, uvicorn and gunicorn; `dev.py`: `serve --dev`
"""
