"""The edge that finds the config fields a KV layout needs: the catalog entry's config, or a config the caller read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app import catalog
from app.core.spec import ModelSpec
from app.serving.layout import KvLayout, full_layout, kv_layout


def layout_for(model: ModelSpec, config: Mapping[str, Any] | None = None) -> KvLayout:
    """kv_layout() from `config` (a local config.json), else the catalog entry's effective config (the text config
    for multimodal releases), else full attention from the inventory's summary (Hub models: the config is not kept)."""
    if config is None and model.source == "catalog" and (entry := catalog.load_entry(model.id)) is not None:
        return kv_layout(model.arch, entry.effective_config).model_copy(
            update={"source": f"catalog config of {entry.id}"}
        )
    if config is not None:
        return kv_layout(model.arch, config)
    return full_layout(model.arch)
