"""Inventory builds of Hub and file configs for the web service: child processes, a cap, a queue and a timeout.

Building an inventory instantiates the model on the meta device: CPU-bound Python that would hold the GIL
(and the default thread pool) that every other request needs. `BuildPool` runs each build in a process forked
from a forkserver that has torch and transformers imported already, at most `workers` at once, with at most
`queue` more waiting (beyond that: 503 Overloaded), and kills a build after `timeout_s` seconds. Builds of
the same config share one child; a request that stops waiting (its deadline) leaves the build running to
fill the cache for the next one. Catalog models never come here: their inventories ship precomputed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app import deadline
from app.core.spec import ModelSource, ModelSpec
from app.errors import GpuplanError, MalformedConfig, Overloaded
from app.inventory.cache import cache_key, lookup, remember

# imported once by the forkserver, so that every build's child starts with them loaded
_PRELOAD = ["torch", "transformers", "app.inventory.builder"]


@dataclass(frozen=True)
class PoolStats:
    """What /readyz reports: build slots, builds running and waiting, and whether a new build would wait."""

    workers: int
    queue: int
    running: int
    waiting: int

    @property
    def saturated(self) -> bool:
        return self.running >= self.workers


def _child(conn: Connection, config: dict[str, Any]) -> None:
    """In the child: build and send the inventory JSON, or the error (a GpuplanError travels as itself)."""
    from app.inventory.builder import build_spec

    try:
        spec = build_spec(config, model_id="build", source="file")
        conn.send(("ok", spec.model_dump_json(exclude={"num_params"})))
    except GpuplanError as exc:
        conn.send(("error", exc))
    except Exception as exc:  # an unexpected transformers failure: a 422 naming it, never a crash of the server
        conn.send(("error", MalformedConfig(f"the config does not build a model ({type(exc).__name__}: {exc})")))
    finally:
        conn.close()


def _run_child(config: dict[str, Any], timeout_s: float) -> ModelSpec:
    """Fork a builder from the forkserver, wait up to `timeout_s` for its answer, kill it when late."""
    ctx = multiprocessing.get_context("forkserver")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, config), daemon=True, name="gpuplan-inventory")
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise MalformedConfig(
                f"building this config's inventory took longer than {timeout_s:g} s "
                "(GPUPLAN_INVENTORY_BUILD_TIMEOUT): its sizes are beyond what gpuplan builds"
            )
        try:
            kind, payload = receiver.recv()
        except EOFError:
            raise MalformedConfig(
                f"building this config's inventory stopped the builder (exit code {process.exitcode})"
            ) from None
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
    if kind == "error":
        raise payload
    return ModelSpec.model_validate_json(payload)


Runner = Callable[[dict[str, Any], float], ModelSpec]


class BuildPool:
    """Builds inventories in child processes: `workers` at once, `queue` more waiting, `timeout_s` each.

    `runner(config, timeout_s)` does one build in a thread of the pool's own (default: a forkserver child);
    it is the seam tests use to make builds slow.
    """

    def __init__(self, workers: int, queue: int, timeout_s: float, runner: Runner | None = None) -> None:
        self.workers = workers
        self.queue = queue
        self.timeout_s = timeout_s
        self._runner: Runner = runner or _run_child
        self._slots = asyncio.Semaphore(workers)
        self._running = 0
        self._waiting = 0
        self._builds: dict[str, asyncio.Task[ModelSpec]] = {}
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    def stats(self) -> PoolStats:
        return PoolStats(workers=self.workers, queue=self.queue, running=self._running, waiting=self._waiting)

    async def spec(
        self,
        config: dict[str, Any],
        *,
        model_id: str,
        source: ModelSource,
        cache_dir: Path | None,
        revision: str | None = None,
        published_params: int | None = None,
    ) -> ModelSpec:
        """The inventory of `config`: from the cache, else built in a child process (one per distinct config)."""
        key = cache_key(config)
        update = {"id": model_id, "source": source, "revision": revision, "published_params": published_params}
        spec = lookup(key, cache_dir)
        if spec is None:
            task = self._builds.get(key)
            if task is None:
                self._admit()
                task = asyncio.get_running_loop().create_task(self._build(key, config, cache_dir))
                self._builds[key] = task
                task.add_done_callback(lambda done: self._forget(key, done))
            with deadline.waiting_for(f"the inventory build of {model_id}"):
                spec = await asyncio.shield(task)
        return spec.model_copy(update=update)

    def _admit(self) -> None:
        if self._running + self._waiting >= self.workers + self.queue:
            raise Overloaded(
                f"every inventory build slot is busy ({self._running} building, {self._waiting} waiting; "
                "GPUPLAN_INVENTORY_WORKERS, GPUPLAN_INVENTORY_QUEUE): try again in a few seconds"
            )

    async def _build(self, key: str, config: dict[str, Any], cache_dir: Path | None) -> ModelSpec:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            loop = asyncio.get_running_loop()
            spec = await loop.run_in_executor(self._executor(), self._runner, config, self.timeout_s)
        finally:
            self._running -= 1
            self._slots.release()
        await asyncio.to_thread(remember, key, spec, cache_dir)
        return spec

    def warm(self) -> None:
        """Start the forkserver now (it imports torch and transformers in the background), not on the first build."""
        from multiprocessing import forkserver

        multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
        forkserver.ensure_running()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that only wait on the children (their own, so builds never take the default pool's)."""
        if self._threads is None:
            multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
            self._threads = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="gpuplan-build")
        return self._threads

    def _forget(self, key: str, task: asyncio.Task[ModelSpec]) -> None:
        if self._builds.get(key) is task:
            del self._builds[key]
        if not task.cancelled():
            task.exception()  # retrieved: a build nobody waits for any more must not log "never retrieved"

    async def aclose(self) -> None:
        """Cancel the waits of running builds (their children are killed by their timeout) and stop the threads."""
        for task in list(self._builds.values()):
            task.cancel()
        if self._builds:
            await asyncio.gather(*self._builds.values(), return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
