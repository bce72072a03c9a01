"""The machine probe the real-training tests size themselves by, and the report of what they ran."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

REPORT = pytest.StashKey[list[str]]()


@dataclass(frozen=True)
class MachineProbe:
    """This CPU's 16-bit GEMM speed, and whether the training tests compute 16-bit matmuls through fp32."""

    bf16_s: float
    fp32_s: float
    slow_16bit: bool
    fp32_matmuls: bool

    def describe(self) -> str:
        mode = "fp32 compute for 16-bit matmuls" if self.fp32_matmuls else "native 16-bit matmuls"
        speed = "slow (fallback path)" if self.slow_16bit else "fast"
        return (
            f"256x256 matmul: bf16 {self.bf16_s * 1e3:.2f} ms, fp32 {self.fp32_s * 1e3:.2f} ms "
            f"-> 16-bit GEMM {speed}; training tests use {mode}"
        )


@pytest.fixture(scope="session")
def machine(request: pytest.FixtureRequest) -> MachineProbe:
    """Times a 256x256 bf16 and fp32 matmul once per session; GPUPLAN_FP32_MATMULS=1/0 forces the mode."""
    from app.calibration.matmul import slow_16bit_matmuls

    slow, bf16, fp32 = slow_16bit_matmuls()
    forced = os.environ.get("GPUPLAN_FP32_MATMULS")
    probe = MachineProbe(bf16, fp32, slow, slow if forced is None else forced == "1")
    report(request.config, probe.describe())
    return probe


def report(config: pytest.Config, line: str) -> None:
    """A line for the calibration section of the terminal summary."""
    config.stash.setdefault(REPORT, []).append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.section("calibration: machine and points")
        for line in lines:
            terminalreporter.write_line(line)
