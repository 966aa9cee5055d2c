"""Who is calling: API keys from the mounted Secret (`credentials.py`) and the ways a client presents one,
with the browser Origin check (`identity.py`)."""
