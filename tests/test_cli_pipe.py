"""Every command exits quietly when the reader of its stdout closes early (`gpuplan gpus --json | head -1`)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPE_BYTES = 4096  # the smallest pipe Linux allows: every command below prints more, so it must meet a closed pipe


@pytest.mark.parametrize(
    "args",
    [
        ["gpus", "--json"],
        ["models", "--json"],
        ["models"],
        ["estimate", "meta-llama/Llama-3.1-8B"],
        ["estimate", "meta-llama/Llama-3.1-8B", "--json"],
    ],
)
def test_a_reader_that_closes_early_gets_no_traceback(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GPUPLAN_DATA_DIR": str(tmp_path)}
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    with subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args], stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    ) as proc:
        os.close(write_end)
        first = os.read(read_end, 64)  # like `head -c 64`: read a little, then go away
        os.close(read_end)
        stderr = proc.communicate(timeout=120)[1].decode()
    assert first
    assert stderr == "", stderr
    assert proc.returncode == 1
