"""config.json files given through the planner form (no Hub needed): kept by content hash, named `config:<hash>`.

A stored config is named by the first 16 hex digits of the SHA-256 of its canonical JSON, so the result page
stays a permalink on this server (`/plan?model=config:...`). The same limits as a local config.json apply here
(2 MiB, a JSON object); the inventory build then applies its own size caps (app/inventory), as for any config.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from app.errors import InputError, MalformedConfig
from app.settings import Settings

PREFIX = "config:"
NAME = re.compile(r"^config:[0-9a-f]{16}$")
FIELD = "config_json"


def folder(settings: Settings) -> Path:
    return settings.data_dir / "uploaded-configs"


def parse_config(raw: bytes, where: str, limit: int) -> dict[str, Any]:
    """A model's config.json from bytes: at most `limit` bytes, UTF-8 JSON, an object naming its model_type."""
    if len(raw) > limit:
        raise MalformedConfig(f"{where} is larger than {limit} bytes; a config.json is a few KB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedConfig(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedConfig(f"{where} must hold a JSON object (a model's config.json)")
    if not isinstance(data.get("model_type"), str):
        raise MalformedConfig(f"{where} has no model_type: give the model's config.json, not a training config")
    return data


def save(settings: Settings, config: dict[str, Any]) -> str:
    """Store the config (once per content) and return its name, `config:<16 hex>`."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    name = PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]
    path = folder(settings) / f"{name.removeprefix(PREFIX)}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return name


def load(settings: Settings, name: str) -> dict[str, Any]:
    """The stored config of `name`; an InputError naming what to do when this server does not hold it."""
    if not NAME.match(name):
        raise InputError(f"{name!r} is not an uploaded config name (config: and 16 hex digits)")
    path = folder(settings) / f"{name.removeprefix(PREFIX)}.json"
    if not path.is_file():
        raise InputError(
            f"this server holds no uploaded config {name}: give the model's config.json again in the planner form",
            errors=[{"field": "model", "message": f"no uploaded config {name} on this server"}],
        )
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded
