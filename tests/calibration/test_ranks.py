"""run_ranks: results by rank, and a failing, dying or hanging rank becomes one clear error with no rank left."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from app.calibration.ranks import rank_environment, run_ranks
from app.errors import CalibrationError


def echo(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    return {"rank": rank, "world": world, "env": os.environ["RANK"], "port": os.environ["MASTER_PORT"], **job}


def fail_on_rank_1(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    if rank == 1:
        raise ValueError("rank one cannot build its model")
    time.sleep(60)  # rank 0 would wait for rank 1 in a collective: the parent must kill it
    return {"pid": os.getpid()}


def die_on_rank_0(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    if rank == 0:
        os._exit(9)
    time.sleep(60)
    return {}


def hang(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    with open(os.path.join(job["dir"], f"pid{rank}"), "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)
    return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_every_rank_runs_with_torchrun_variables_and_returns_by_rank() -> None:
    results = run_ranks(echo, 3, {"x": 1}, timeout_s=60)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert [r["env"] for r in results] == ["0", "1", "2"]
    assert {r["world"] for r in results} == {3} and {r["x"] for r in results} == {1}
    assert len({r["port"] for r in results}) == 1


def test_the_environment_is_loopback_with_one_thread() -> None:
    env = rank_environment(1, 2, 29500)
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["WORLD_SIZE"] == "2" and env["OMP_NUM_THREADS"] == "1"


def test_a_failing_rank_names_itself_and_its_error_and_the_others_are_killed() -> None:
    started = time.monotonic()
    with pytest.raises(CalibrationError, match=r"rank 1 of 2 failed: ValueError: rank one cannot build its model"):
        run_ranks(fail_on_rank_1, 2, {}, timeout_s=60)
    assert time.monotonic() - started < 30  # not the 60 s rank 0 sleeps


def test_a_rank_that_dies_is_reported_with_its_exit_code() -> None:
    with pytest.raises(CalibrationError, match=r"rank 0 of 2 exited with code 9"):
        run_ranks(die_on_rank_0, 2, {}, timeout_s=60)


def test_a_timeout_kills_every_rank(tmp_path: Any) -> None:
    with pytest.raises(CalibrationError, match=r"ran past 8 s \(ranks \[0, 1\] had not finished\): all ranks killed"):
        run_ranks(hang, 2, {"dir": str(tmp_path)}, timeout_s=8)
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(2)]
    assert not any(_alive(pid) for pid in pids)


def test_zero_ranks_are_refused() -> None:
    with pytest.raises(CalibrationError, match="at least one rank"):
        run_ranks(echo, 0, {}, timeout_s=5)


def test_ranks_die_with_a_parent_that_is_killed(tmp_path: Any) -> None:
    """A `gpuplan calibrate` killed by SIGKILL (no finally runs) leaves no rank behind."""
    import signal
    import subprocess
    import sys

    script = (
        "from app.calibration.ranks import run_ranks\n"
        "from tests.calibration.test_ranks import hang\n"
        f"if __name__ == '__main__': run_ranks(hang, 2, {{'dir': {str(tmp_path)!r}}}, timeout_s=120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid*")]
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)
