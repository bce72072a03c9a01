"""Rebuild the catalog's precomputed inventories from transformers: `python -m app.inventory.regenerate [DIR]`."""

from __future__ import annotations

import sys
from pathlib import Path

from app.catalog import INVENTORIES_DIR, catalog_ids, load_entry, slug
from app.inventory.builder import build_spec


def regenerate(out_dir: Path = INVENTORIES_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model_id in catalog_ids():
        entry = load_entry(model_id)
        assert entry is not None
        spec = build_spec(
            entry.effective_config, model_id=entry.id, source="catalog", published_params=entry.params_published
        )
        path = out_dir / f"{slug(model_id)}.json"
        path.write_text(spec.model_dump_json(indent=1, exclude={"num_params"}) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in regenerate(Path(sys.argv[1]) if len(sys.argv) > 1 else INVENTORIES_DIR):
        print(p)
