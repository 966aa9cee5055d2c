"""The engine as the worker sees it: what the transports call, the queue in front of the core, and the core
itself, in a child process (the default) or a thread.

- `interface.py`: the `Engine` protocol every transport talks to, and the values that cross it
- `queued.py`: loading, admission to the slots, the fair queue (`fair_queue.py`), cancellation
- `streams.py`: a core's steps become each request's text deltas (`detokenizer.py`) and its `Finished`
- `process.py`: `ProcessEngine`, the core in a child process over two pipes (`channel.py`), restarted when
  it dies; `in_thread.py`: `ThreadEngine`, the core as a thread of the worker

Only `in_thread.py` loads torch (it runs the core here).
"""
