"""run_ranks: start N worker processes as torch.distributed ranks on loopback, bounded in time, never orphaned.

Each rank is a `spawn`ed process with the torchrun-style environment (MASTER_ADDR=127.0.0.1, a free
MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) and OMP_NUM_THREADS=1; it runs `target(rank, world, job)` and sends
back what it returns (a JSON-able dict) or its error. The parent waits at most `timeout_s` in all; when a rank
fails, dies or the time runs out, every rank still running is killed (SIGKILL) and joined before the error is
raised, so no rank outlives the call; on Linux a rank also dies with its parent (`die_with_parent`). Nothing here
imports torch: the ranks do.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from app.errors import CalibrationError

Target = Callable[[int, int, dict[str, Any]], dict[str, Any]]
# seconds between looks at the ranks while waiting for their results
POLL_S = 0.2
# linux/prctl.h
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """torchrun's variables for one rank on this machine (torch.distributed.run sets the same names)."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, even by SIGKILL (prctl PR_SET_PDEATHSIG), so a killed
    `gpuplan calibrate` leaves no rank behind; elsewhere a no-op (the ranks are daemonic there too)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no libc prctl: the daemonic flag and stop_all still apply
        return


def _rank_entry(target: Target, rank: int, world: int, port: int, job: dict[str, Any], out: Any) -> None:
    die_with_parent()
    os.environ.update(rank_environment(rank, world, port))
    try:
        out.put(("ok", rank, target(rank, world, job)))
    except BaseException as exc:  # everything goes back to the parent, which decides
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        out.put(("error", rank, detail))


def run_ranks(target: Target, world: int, job: dict[str, Any], *, timeout_s: float) -> list[dict[str, Any]]:
    """Run `target` as ranks 0..world-1 and return their results by rank; CalibrationError names the first
    rank that failed (with its error), died (with its exit code) or the timeout, after killing the others."""
    if world < 1:
        raise CalibrationError(f"a run needs at least one rank (got {world})")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_entry, args=(target, r, world, port, job, out), daemon=True) for r in range(world)
    ]
    for proc in procs:
        proc.start()
    try:
        return _collect(procs, out, world, time.monotonic() + timeout_s, timeout_s)
    finally:
        stop_all(procs)
        out.close()
        out.join_thread()


def _collect(
    procs: Sequence[BaseProcess], out: Any, world: int, deadline: float, timeout_s: float
) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    while len(results) < world:
        try:
            status, rank, value = out.get(timeout=POLL_S)
        except queue_module.Empty:
            _check_alive(procs, results, deadline, timeout_s)
            continue
        if status != "ok":
            raise CalibrationError(f"rank {rank} of {world} failed: {value}")
        results[rank] = value
    return [results[r] for r in range(world)]


def _check_alive(procs: Sequence[BaseProcess], results: dict[int, Any], deadline: float, timeout_s: float) -> None:
    for rank, proc in enumerate(procs):
        if rank not in results and proc.exitcode is not None:
            raise CalibrationError(
                f"rank {rank} of {len(procs)} exited with code {proc.exitcode} before sending its result "
                "(killed for memory, or crashed in native code)"
            )
    if time.monotonic() > deadline:
        missing = [r for r in range(len(procs)) if r not in results]
        raise CalibrationError(
            f"the ranks ran past {timeout_s:g} s (ranks {missing} had not finished): all ranks killed; "
            "give fewer layers, a shorter seq_len or a longer timeout"
        )


def stop_all(procs: Sequence[BaseProcess], grace_s: float = 5.0) -> None:
    """Kill every rank still alive and reap them all (no zombies, no orphans)."""
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    for proc in procs:
        proc.join(grace_s)
