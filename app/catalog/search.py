"""Find catalog models by text, family, size, MoE and release month; one row per model, sorted as asked."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.catalog import CATALOG_DIR, catalog_ids, load_spec
from app.errors import InputError

Sort = Literal["id", "params", "released", "family"]
MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"


class CatalogModel(BaseModel):
    """One bundled model as the catalog lists it."""

    model_config = ConfigDict(frozen=True)

    id: str
    family: str
    released: str = Field(description="Public release month, YYYY-MM.")
    model_type: str
    architecture: str
    num_params: int
    num_experts: int = Field(description="Routed experts per MoE layer; 0 for dense models.")
    layers: int
    hidden_size: int
    vocab_size: int


class CatalogQuery(BaseModel):
    """Filters of the catalog listing; every one optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    q: str | None = Field(None, max_length=100, description="Part of the id, family, model_type or architecture.")
    family: str | None = Field(None, max_length=60, description="Family, e.g. 'Qwen3' or 'Llama 3' (case-insensitive).")
    min_params: int | None = Field(None, ge=0, description="At least this many parameters.")
    max_params: int | None = Field(None, ge=0, description="At most this many parameters.")
    released_from: str | None = Field(None, pattern=MONTH, description="Released in or after this month, YYYY-MM.")
    released_to: str | None = Field(None, pattern=MONTH, description="Released in or before this month, YYYY-MM.")
    moe: bool | None = Field(None, description="true: only mixture-of-experts models; false: only dense ones.")
    sort: Sort = Field("id", description="id, params, released (newest first) or family.")


@lru_cache(maxsize=1)
def _releases() -> dict[str, dict[str, str]]:
    models: dict[str, dict[str, str]] = json.loads((CATALOG_DIR / "releases.json").read_text())["models"]
    return models


@lru_cache(maxsize=1)
def catalog_models() -> tuple[CatalogModel, ...]:
    """Every catalog model with its family and release month (app/catalog/releases.json)."""
    rows = []
    for model_id in catalog_ids():
        spec, release = load_spec(model_id), _releases().get(model_id)
        if spec is None or release is None:  # pragma: no cover - tests/core/test_catalog.py holds both complete
            raise InputError(f"catalog entry {model_id} has no inventory or no release record")
        arch = spec.arch
        rows.append(
            CatalogModel(
                id=model_id,
                family=release["family"],
                released=release["released"],
                model_type=arch.model_type,
                architecture=arch.architecture,
                num_params=spec.num_params,
                num_experts=arch.num_experts,
                layers=arch.num_layers,
                hidden_size=arch.hidden_size,
                vocab_size=arch.vocab_size,
            )
        )
    return tuple(rows)


def _keeps(row: CatalogModel, query: CatalogQuery) -> bool:
    text = f"{row.id} {row.family} {row.model_type} {row.architecture}".lower()
    return (
        (query.q is None or query.q.strip().lower() in text)
        and (query.family is None or row.family.lower() == query.family.strip().lower())
        and (query.min_params is None or row.num_params >= query.min_params)
        and (query.max_params is None or row.num_params <= query.max_params)
        and (query.released_from is None or row.released >= query.released_from)
        and (query.released_to is None or row.released <= query.released_to)
        and (query.moe is None or (row.num_experts > 0) == query.moe)
    )


def find_models(query: CatalogQuery | None = None) -> list[CatalogModel]:
    """The catalog models the query keeps, sorted by its `sort` (released: newest first, then id)."""
    query = query or CatalogQuery()
    rows = [r for r in catalog_models() if _keeps(r, query)]
    keys = {
        "id": lambda r: (r.id,),
        "params": lambda r: (r.num_params, r.id.lower()),
        "released": lambda r: (-int(r.released.replace("-", "")), r.id.lower()),
        "family": lambda r: (r.family.lower(), r.num_params),
    }
    return sorted(rows, key=keys[query.sort])


def families() -> list[str]:
    """The families in the catalog, alphabetically."""
    return sorted({r.family for r in catalog_models()}, key=str.lower)
