"""`gpuplan calibrate` says on stderr how long it should take and each phase as it ends."""

from __future__ import annotations

import logging

import pytest

from app.calibration.progress import LOGGER, expected_seconds, stderr_progress
from app.core.plan import TrainingPlan

CONFIG = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "vocab_size": 32000}


def test_phases_go_to_stderr_with_the_elapsed_time(capsys: pytest.CaptureFixture[str]) -> None:
    with stderr_progress(154.0):
        logging.getLogger(LOGGER).info("%s done", "step1.forward")
    logging.getLogger(LOGGER).info("after the block: not shown")
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == ""
    assert lines[0].endswith("expected about 154 s on a slow 2-core CPU; phases print as they end")
    assert lines[1].startswith("calibrate [") and lines[1].endswith("s] step1.forward done")
    assert len(lines) == 2


def test_the_harness_logs_each_phase_to_the_progress_logger() -> None:
    from app.calibration import harness

    assert harness.progress.name == LOGGER


def test_expected_time_is_the_measured_fit_and_grows_with_the_work() -> None:
    plan = TrainingPlan(device="cpu", optimizer="adamw", seq_len=256)
    two = expected_seconds(CONFIG, plan, 2, 2)
    assert 140 < two < 170  # measured: 153.9 s for this run (app/calibration/progress.py)
    assert expected_seconds(CONFIG, plan.model_copy(update={"seq_len": 128}), 1, 2) < two
    assert expected_seconds(CONFIG, plan, 4, 2) > two
