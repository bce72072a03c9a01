"""The remote-code check: gpuplan never runs a repository's code, it only reads config fields of known families."""

from __future__ import annotations

from typing import Any

from app.errors import RemoteCodeRefused


def _known_to_transformers(model_type: str) -> bool:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # heavy: imported on demand
    except ImportError:
        return False
    return model_type in CONFIG_MAPPING


def check_remote_code(config: dict[str, Any], *, name: str | None = None) -> list[str]:
    """Notes about remote code in `config`; raise RemoteCodeRefused when it needs code of an unknown family.

    A config with `auto_map` asks for trust_remote_code. gpuplan never executes that code: when its
    `model_type` is a family transformers knows, the estimate is built from the config fields with the
    library's own class, and a note says so; otherwise there is nothing safe to build from.
    """
    if "auto_map" not in config:
        return []
    label = name or config.get("_name_or_path") or "this model"
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type and _known_to_transformers(model_type):
        note = (
            f"{label} asks for remote code (auto_map); estimated from config fields of known family "
            f"{model_type}; remote code not executed"
        )
        return [note]
    raise RemoteCodeRefused(
        f"{label} needs trust_remote_code and its model_type {model_type!r} is unknown to transformers; "
        "gpuplan never executes remote code"
    )
