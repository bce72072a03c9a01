"""The fault script (benchmarks/bench_faults.py) against a real server: every Hub fault answers within the deadline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_faults.py"


@pytest.mark.timeout(240)
def test_every_hub_fault_answers_within_the_deadline() -> None:
    spec = importlib.util.spec_from_file_location("bench_faults", SCRIPT)
    assert spec is not None and spec.loader is not None
    faults = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = faults  # dataclasses look their module up there
    spec.loader.exec_module(faults)
    deadline = 4.0
    results = faults.run(deadline)
    assert len(results) == 12
    for fault, status, seconds, detail in results:
        assert status in fault.expect, (fault.name, status, detail)
        assert seconds <= deadline + faults.SLACK_S, (fault.name, seconds)
        assert status == 200 or detail, fault.name
