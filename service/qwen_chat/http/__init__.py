"""The HTTP transports and pages: `openai_api.py` (`/v1/...`), `seed_api.py` (the seeds' `/chat` and
`/chat_stream`), `probes.py` (/livez, /readyz, /metrics), `page.py` (the chat page, /whoami, security
headers), `bearer.py` (the key dependency) and `errors.py` (every HTTP error as OpenAI's error object)."""
