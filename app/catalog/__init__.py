"""The bundled model catalog: published config.json files and their precomputed inventories (no torch needed)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.core.spec import ModelSpec

CATALOG_DIR = Path(__file__).parent
CONFIGS_DIR = CATALOG_DIR / "configs"
INVENTORIES_DIR = CATALOG_DIR / "inventories"


class CatalogEntry(BaseModel):
    """One bundled model: its Hub id, where the config came from, and the config itself."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    provenance: str
    params_published: int | None = None
    config: dict[str, Any]
    config_overrides: dict[str, Any] = {}

    @property
    def effective_config(self) -> dict[str, Any]:
        return {**self.config, **self.config_overrides}


def slug(model_id: str) -> str:
    return model_id.replace("/", "--")


@lru_cache(maxsize=1)
def catalog_ids() -> tuple[str, ...]:
    return tuple(sorted(json.loads(p.read_text())["id"] for p in CONFIGS_DIR.glob("*.json")))


@lru_cache(maxsize=1)
def _lowered() -> dict[str, str]:
    return {i.lower(): i for i in catalog_ids()}


def _find(model_id: str) -> str | None:
    return _lowered().get(model_id.strip().lower())


def in_catalog(model_id: str) -> bool:
    return _find(model_id) is not None


@lru_cache(maxsize=64)
def load_entry(model_id: str) -> CatalogEntry | None:
    found = _find(model_id)
    if found is None:
        return None
    return CatalogEntry.model_validate_json((CONFIGS_DIR / f"{slug(found)}.json").read_text())


@lru_cache(maxsize=64)
def load_spec(model_id: str) -> ModelSpec | None:
    """The precomputed inventory of a catalog model (built by `python -m app.inventory.regenerate`)."""
    found = _find(model_id)
    if found is None:
        return None
    return ModelSpec.model_validate_json((INVENTORIES_DIR / f"{slug(found)}.json").read_text())
