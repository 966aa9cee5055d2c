"""The HTTP transports and pages: `openai_api.py` (`/v1/models` and what the OpenAI endpoints share),
`openai_chat.py` (`/v1/chat/completions`), `openai_completions.py` (`/v1/completions`), `openai_schema.py`
(their bodies), `openai_logprobs.py`, `openai_responses.py` (`/v1/responses`, with `responses_schema.py` and
`responses_events.py`), `tokenizer_api.py` (`/tokenize`, `/detokenize`), `render_api.py` (vLLM's render
endpoints), `seed_api.py` (the seeds' `/chat` and `/chat_stream`), `probes.py` (/livez, /readyz, /metrics),
`page.py` (the chat page, /whoami, security headers), `bearer.py` (the key dependency), `deadline.py` (the
`X-Request-Timeout` dependency) and `errors.py` (every HTTP error as OpenAI's error object)."""
