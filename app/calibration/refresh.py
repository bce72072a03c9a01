"""Re-estimate the shipped measurements with the current estimator: `python -m app.calibration.refresh [FILE...]`.

The shipped runs (calibration/results/*.store.jsonl) seed every new store, and result pages quote their errors
as "how far off gpuplan has been on comparable runs"; after an estimator change their estimates must be the
shipping estimator's. The measured bytes are never touched. A test fails while a file is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.store.seed import BUNDLED_RESULTS


def refresh(path: Path) -> int:
    """Rewrite `path` with every record's estimate recomputed now; returns how many estimates changed."""
    from app.calibration.commands import re_estimate
    from app.store.db import read_jsonl

    changed = 0
    out = []
    for record in read_jsonl(path):
        fresh = re_estimate(record)
        changed += fresh.estimated_peak_bytes != record.estimated_peak_bytes
        out.append(fresh.model_dump_json())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    tmp.replace(path)
    return changed


if __name__ == "__main__":
    files = [Path(a) for a in sys.argv[1:]] or sorted(BUNDLED_RESULTS.glob("*.store.jsonl"))
    for f in files:
        print(f"{f}: {refresh(f)} estimates changed")
