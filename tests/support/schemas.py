"""The JSON schema structured-output tests constrain replies to: bounded (an enum, a two-digit integer, a
string of at most 8 characters), so that even random weights finish it well within 64 tokens."""

from __future__ import annotations

BOUNDED = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tag": {"type": "string", "maxLength": 8},
    },
    "required": ["answer", "count", "tag"],
    "additionalProperties": False,
}
