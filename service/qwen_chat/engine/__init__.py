"""The engine room: where tokens are generated. Its rooms, lowest first (each imports only those below it):

- `wire.py`: the messages between the worker and its core; `grammar_spec.py`: a constraint's canonical form;
  `hf_internals/`: the only room that names transformers' internals, and the check of every one
- `model/`: the families served, loading a checkpoint and its tokenizer, prompts and the client's text
- `tiny/`: the offline tiny models for tests, demos (`serve --dev`) and CI, in each family's real layout
- `core/`: the model on its device and the loop that decodes (batching, sampling, grammars, attention), and
  the engine process's `main`
- `api/`: what the worker runs: the `Engine` the transports call, the queue, and the core in a child process
  or a thread

Importing this package, `wire`, `model.prompts` or `api.interface` loads no torch; the cores do.
"""
