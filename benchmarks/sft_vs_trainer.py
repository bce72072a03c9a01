"""The same plans through transformers.Trainer and trl.SFTTrainer: measured peaks (CPU tracker) and estimates.

Not a test: the runs behind docs/sft-vs-trainer.md (a minute or two of CPU), one JSON line per plan.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sft_vs_trainer.py
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from app.calibration.compare import compare_to, spec_for
from app.calibration.harness import run_measurement
from app.core.plan import TrainingPlan

SPEC = Path(__file__).resolve().parents[1] / "calibration" / "cpu-matrix-sft.toml"
CASES: list[tuple[str, dict[str, Any]]] = [
    ("llama", {"method": "lora", "seq_len": 256}),
    ("qwen2", {"method": "lora", "seq_len": 256, "dropout": 0.0}),
    ("qwen3", {"method": "qlora", "seq_len": 256, "dropout": 0.0}),
    ("llama", {"method": "full", "seq_len": 128, "batch_size": 2}),
    ("gemma", {"method": "full", "seq_len": 128}),
    ("llama", {"method": "lora", "seq_len": 256, "autocast": True, "dropout": 0.0}),
]


def main() -> None:
    families = tomllib.loads(SPEC.read_text())["families"]
    for family, fields in CASES:
        row: dict[str, Any] = {"family": family, "plan": fields}
        for loop in ("trainer", "sft"):
            plan = TrainingPlan(device="cpu", optimizer="adamw", loop="sft" if loop == "sft" else "trainer", **fields)
            measured = run_measurement(families[family]["config"], plan, loop=loop)
            comparison, _ = compare_to(measured, spec_for(measured, family))
            row[loop] = {
                "measured": measured.peak_allocated_bytes,
                "estimated": comparison.estimated_peak_bytes,
                "error_pct": round(comparison.error_pct, 2),
                "s": round(measured.duration_s, 1),
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
