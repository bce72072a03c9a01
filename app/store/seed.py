"""The measured runs gpuplan ships (calibration/results/*.store.jsonl), loaded into an empty store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.store.db import Store

BUNDLED_RESULTS = Path(__file__).resolve().parents[2] / "calibration" / "results"


def seed_store(store: Store) -> int:
    """Load the shipped measurements (verified) into a store that has none; returns how many (0 if it had some)."""
    if store.list_measurements(limit=1):
        return 0
    return sum(store.import_jsonl(path, verified=True) for path in sorted(BUNDLED_RESULTS.glob("*.store.jsonl")))
