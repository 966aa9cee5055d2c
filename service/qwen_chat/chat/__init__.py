"""What every transport does with a chat: admit it, then stream its reply.

- `admission.py`: `Admission.start`: drain, rate limit, prompt budget, queue; a `ChatStream` or a `Refusal`
- `stream.py`: `ChatStream`, one admitted reply as text deltas and a `Finished`, with its metrics
- `deadline.py`: a request's deadline, the operator's bound and the request's own (the smaller)
- `reasoning.py`: a thinking model's (Qwen3's) `<think>` block apart from its answer
- `stop_strings.py`: cutting a reply at the client's stop strings; `surrogates.py`: strings that are not text
- `rate_limit.py`: the per-user limit and its storage (memory, a pod-wide SQLite file, Redis)
"""
