"""Progress of one calibration run on stderr: the expected time first, then each phase as it ends.

run_measurement logs to the `app.calibration.progress` logger (building the model, then `step1.forward`,
`step1.backward`, ...); `gpuplan calibrate` shows those records here, with the seconds since the start.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.core.plan import TrainingPlan

LOGGER = "app.calibration.progress"
# A fit of two runs of `gpuplan calibrate meta-llama/Llama-2-7b-hf --device cpu --optimizer adamw` (QLoRA, 2 steps)
# on a 2-core CPU shared with another calibration (the CI kind of machine, --matmuls auto): 1 layer, seq 128 took
# 97.3 s and 2 layers, seq 256 took 153.9 s. seconds = FIXED_S + S_PER_WORK x point_work x steps, with
# app/calibration/budget.py's point_work; FIXED_S is mostly importing torch and building (quantizing) the model.
FIXED_S = 72.0
S_PER_WORK = 3.0e-10


def expected_seconds(config: dict[str, Any], plan: TrainingPlan, layers: int | None, steps: int) -> float:
    """About how long the run takes on a slow CPU (the fit above); a GPU is far faster."""
    from app.calibration.budget import point_work
    from app.calibration.matrix import Point

    truncated = {**config, "num_hidden_layers": layers or config.get("num_hidden_layers", 1)}
    truncated.setdefault("intermediate_size", 4 * int(truncated["hidden_size"]))
    work = point_work(Point(id="cli", family="cli", config=truncated, plan=plan, split="tune"))
    return FIXED_S + S_PER_WORK * work * steps


class _Elapsed(logging.Formatter):
    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started

    def format(self, record: logging.LogRecord) -> str:
        return f"calibrate [{time.monotonic() - self.started:6.1f} s] {record.getMessage()}"


@contextmanager
def stderr_progress(expected_s: float | None) -> Iterator[None]:
    """Print the phases of the run on stderr while the block runs (stdout keeps only the result)."""
    logger = logging.getLogger(LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Elapsed(time.monotonic()))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if expected_s is not None:
        logger.info("expected about %.0f s on a slow 2-core CPU; phases print as they end", expected_s)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
