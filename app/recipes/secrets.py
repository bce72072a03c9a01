"""Secrets in imported configs (hub tokens, API keys) are never echoed: keys and values that look secret are redacted."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "redacted"

# Key names whose values are credentials: hub_token, hf_token, wandb_api_key, push_to_hub_token, *_password, ...
_SECRET_KEY = re.compile(r"token|secret|passw(or)?d|api_?key|credential|private_key", re.IGNORECASE)
# Values that are credentials whatever their key: Hugging Face (hf_...), OpenAI-style (sk-...), GitHub (ghp_...),
# Weights & Biases (40 hex digits), AWS access key ids (AKIA...), and bearer headers.
_SECRET_VALUE = re.compile(
    r"\bhf_[A-Za-z0-9]{16,}|\bsk-[A-Za-z0-9_-]{16,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\b[0-9a-f]{40}\b"
    r"|\bAKIA[0-9A-Z]{16}\b|\bBearer\s+\S+",
)
# How much of a value a report shows: long strings and big containers are cut.
MAX_SHOWN_CHARS = 200
MAX_SHOWN_ITEMS = 50


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def looks_secret(text: str) -> bool:
    return bool(_SECRET_VALUE.search(text))


def safe_key(key: str) -> str:
    """A field name as reports show it: a name that is itself a credential is redacted."""
    return REDACTED if looks_secret(key) else key


def redact_text(text: str) -> str:
    """Free text (a parser's message) with every credential-looking token replaced."""
    return _SECRET_VALUE.sub(REDACTED, text)


def shown(value: Any, key: str = "") -> Any:
    """`value` as a report may show it: secret keys and secret-looking values redacted, long values cut."""
    if key and is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        if looks_secret(value):
            return REDACTED
        return value if len(value) <= MAX_SHOWN_CHARS else value[:MAX_SHOWN_CHARS] + "…"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_SHOWN_ITEMS]
        return {safe_key(str(k)): shown(v, str(k)) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [shown(v) for v in list(value)[:MAX_SHOWN_ITEMS]]
    return value
