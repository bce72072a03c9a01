"""Inventory cache per config hash, in memory and on disk, so a repeated estimate never re-instantiates."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from app.core.spec import ModelSource, ModelSpec
from app.inventory.builder import build_spec, config_hash

_memory: dict[str, ModelSpec] = {}
# bumped when build_spec records a new fact, so inventories cached without it are rebuilt (2: mxfp4_experts)
FORMAT = 2
_lock = threading.Lock()


def cache_key(config: dict[str, Any]) -> str:
    import transformers

    # an inventory is a fact about (config, transformers version): a new transformers may build other modules
    return f"{config_hash(config)[:32]}-{transformers.__version__}-f{FORMAT}"


def lookup(key: str, cache_dir: Path | None) -> ModelSpec | None:
    """The inventory stored under `key`, from memory, then disk (a damaged file is a miss); None when absent."""
    with _lock:
        spec = _memory.get(key)
    if spec is None and cache_dir is not None:
        path = cache_dir / f"{key}.json"
        if path.is_file():
            try:
                spec = ModelSpec.model_validate_json(path.read_text())
            except ValueError:
                spec = None  # rebuilt by the caller
            if spec is not None:
                with _lock:
                    _memory[key] = spec
    return spec


def remember(key: str, spec: ModelSpec, cache_dir: Path | None) -> None:
    """Keep a built inventory in memory and (atomically) on disk."""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(spec.model_dump_json(exclude={"num_params"}))
        os.replace(tmp, cache_dir / f"{key}.json")
    with _lock:
        _memory[key] = spec


def cached_spec(
    config: dict[str, Any],
    *,
    model_id: str,
    source: ModelSource,
    cache_dir: Path | None,
    revision: str | None = None,
    published_params: int | None = None,
) -> ModelSpec:
    """The inventory of `config`, from memory, then disk, then transformers on the meta device (in this process)."""
    key = cache_key(config)
    update = {"id": model_id, "source": source, "revision": revision, "published_params": published_params}
    spec = lookup(key, cache_dir)
    if spec is None:
        spec = build_spec(
            config, model_id=model_id, source=source, revision=revision, published_params=published_params
        )
        remember(key, spec, cache_dir)
    return spec.model_copy(update=update)
