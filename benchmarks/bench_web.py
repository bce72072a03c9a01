"""Benchmark (not a test): requests/s and latency of GET /api/v1/estimate against GET /healthz on one server.

Starts `uvicorn app.main:create_app --factory` on loopback (offline, a temporary data dir), then sends the
same bounded number of requests to each endpoint from a few concurrent client processes (httpx, keep-alive),
in alternating rounds (so that load from elsewhere on the machine hits all alike); req/s is the median round.
Three endpoints in one run: /healthz; `unique` estimates, every request a plan never asked before (rank,
sequence length and batch vary, so none is answered from the planner's cache); `repeated` estimates, the
same plan every time (cache hits). It prints both ratios to /healthz. Target: unique rps / healthz rps >= 0.8.
It also prints the server process's CPU time per request of each endpoint (Linux: /proc/<pid>/stat, summed over
the rounds): on a shared machine req/s of one round moves by a third with what else runs, the CPU a request costs
the server much less, so the CPU ratio is the steadier figure of how far the estimate path is from /healthz's.
Last it times, in this process, the parts of a unique answer the cache-hit request skips (`estimate()`,
`recommend()` over every tier, the JSON payload) on the same unique plans, and prints the floor they set: a repeated
request already pays routing, validation, the middleware and sending the answer, so a unique answer costs at least
the repeated request's server CPU plus `estimate()` and the payload, with no recommendation at all.

Run: .venv/bin/python benchmarks/bench_web.py [--requests 2000] [--clients 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ESTIMATE = "/api/v1/estimate?model=meta-llama/Llama-2-7b-hf"
ENDPOINTS = {
    "healthz": "/healthz",
    # {rank} and {seq} come from the request number: 32,768 distinct plans, never a cache hit within one run
    "unique": ESTIMATE + "&rank={rank}&seq_len={seq}",
    "repeated": ESTIMATE,
}
SEQ_LENS = (256, 512, 1024, 2048, 3072, 4096, 6144, 8192)
TARGET_RATIO = 0.8
# Clients share the machine with the server: more client processes than spare CPUs measure the clients.
DEFAULT_CLIENTS = max(2, min(4, (os.cpu_count() or 2) - 1))


@dataclass
class Result:
    name: str
    rounds: list[float] = field(default_factory=list)  # req/s of each round
    latencies: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0  # the server process's CPU seconds over this endpoint's rounds
    requests: int = 0

    @property
    def cpu_ms(self) -> float | None:
        return self.server_cpu_s / self.requests * 1000 if self.requests and self.server_cpu_s else None

    @property
    def rps(self) -> float:
        return statistics.median(self.rounds)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client(args: tuple[str, int, int]) -> list[float]:
    """One client: `count` sequential requests over one keep-alive connection; returns each latency.

    A url containing `{rank}`/`{seq}` gets a different plan in each request (numbered from `offset`).
    """
    url, count, offset = args
    latencies = []
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            n = offset + i
            target = url.replace("{rank}", str(1 + n % 4096)).replace("{seq}", str(SEQ_LENS[(n // 4096) % 8]))
            start = time.perf_counter()
            response = client.get(target)
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return latencies


def one_round(
    pool: multiprocessing.pool.Pool, url: str, requests: int, clients: int, offset: int
) -> tuple[float, list[float]]:
    """Send `requests` requests from `clients` processes at once; (req/s, latencies)."""
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    starts = [offset + sum(per_client[:i]) for i in range(clients)]
    start = time.perf_counter()
    parts = pool.map(_client, [(url, n, s) for n, s in zip(per_client, starts, strict=True)])
    seconds = time.perf_counter() - start
    return requests / seconds, [x for part in parts for x in part]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc; 0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def bench(
    pool: multiprocessing.pool.Pool, urls: dict[str, str], requests: int, clients: int, rounds: int, server: int
) -> list[Result]:
    """`requests` per endpoint in total, split into `rounds` rounds that alternate between the endpoints; the
    server's CPU time is read around each round."""
    results = {name: Result(name) for name in urls}
    for url in urls.values():  # warm-up: connections, imports, caches
        one_round(pool, url, 50 * clients, clients, 10**6)  # warm-up plans are never asked again
    per_round = requests // rounds
    for r in range(rounds):
        for name, url in urls.items():
            before = cpu_seconds(server)
            rps, latencies = one_round(pool, url, per_round, clients, 1 + r * per_round)
            results[name].server_cpu_s += cpu_seconds(server) - before
            results[name].requests += per_round
            results[name].rounds.append(rps)
            results[name].latencies += latencies
    return list(results.values())


def start_server(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPUPLAN_DATA_DIR": data_dir, "HF_HOME": data_dir, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("the server did not start within 30 s")


def answer_parts(count: int = 400) -> dict[str, float]:
    """Mean CPU ms of the three parts of a unique answer a cache hit skips, over `count` of the bench's unique plans
    (rank and sequence length as `_client` varies them; warmed on other plans first)."""
    from app.core.estimate import estimate
    from app.core.gpus import recommend
    from app.core.plan import TrainingPlan
    from app.core.prices import bundled_prices
    from app.core.throughput import RunSize
    from app.exports.report import payload_json
    from app.resolver import resolve_catalog

    model, prices, run = resolve_catalog(ESTIMATE.split("model=")[1]), bundled_prices(), RunSize()
    plans = [TrainingPlan(rank=1 + n % 4096, seq_len=SEQ_LENS[(n // 4096) % 8]) for n in range(count + 50)]
    for plan in plans[count:]:  # warm-up: imports, the model's cached inventory
        est = estimate(model, plan)
        payload_json(model, est, recommend(model, est, prices=prices, run=run))
    plans = plans[:count]
    started = time.process_time()
    ests = [estimate(model, plan) for plan in plans]
    est_s, started = time.process_time() - started, time.process_time()
    recs = [recommend(model, est, prices=prices, run=run) for est in ests]
    rec_s, started = time.process_time() - started, time.process_time()
    for est, rec in zip(ests, recs, strict=True):
        payload_json(model, est, rec)
    json_s = time.process_time() - started
    return {"estimate": est_s / count * 1000, "recommend": rec_s / count * 1000, "payload": json_s / count * 1000}


def print_floor(by_name: dict[str, Result]) -> None:
    """The parts of a unique answer, and the least server CPU a unique answer with no recommendation would cost."""
    parts = answer_parts()
    print("in-process CPU ms per unique plan: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    health, repeated = by_name["healthz"].cpu_ms, by_name["repeated"].cpu_ms
    if health and repeated:
        floor = repeated + parts["estimate"] + parts["payload"]
        print(
            f"floor of a unique answer without recommend(): repeated request {repeated:.3f} + estimate + payload = "
            f"{floor:.3f} ms server CPU, {floor / health:.1f}x /healthz's (with it: "
            f"{floor + parts['recommend']:.3f} ms, {(floor + parts['recommend']) / health:.1f}x)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint (default 2000)")
    parser.add_argument(
        "--clients",
        type=int,
        default=DEFAULT_CLIENTS,
        help=f"concurrent client processes (default {DEFAULT_CLIENTS}: 2 to 4, leaving a CPU to the server)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ns = parser.parse_args()
    urls = dict(ENDPOINTS)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="gpuplan-bench-") as data_dir:
        server = start_server(port, data_dir)
        try:
            with multiprocessing.Pool(ns.clients) as pool:
                base = f"http://127.0.0.1:{port}"
                endpoints = {k: base + v for k, v in urls.items()}
                results = bench(pool, endpoints, ns.requests, ns.clients, ns.rounds, server.pid)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(
        f"{ns.requests} requests per endpoint in {ns.rounds} alternating rounds, {ns.clients} concurrent clients, "
        f"1 uvicorn worker, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"{'endpoint':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'cpu ms':>7}  rounds (req/s)")
    for r in results:
        cpu = f"{r.cpu_ms:>7.3f}" if r.cpu_ms is not None else f"{'-':>7}"
        print(
            f"{r.name:<10} {r.rps:>9.0f} {r.percentile(0.50) * 1000:>8.2f} {r.percentile(0.99) * 1000:>8.2f} "
            f"{statistics.fmean(r.latencies) * 1000:>8.2f} {cpu}  {' '.join(f'{x:.0f}' for x in r.rounds)}"
        )
    by_name = {r.name: r for r in results}
    health = by_name["healthz"].cpu_ms
    for name in ("unique", "repeated"):
        mine = by_name[name].cpu_ms
        if health and mine:
            print(f"{name}-plan estimate: server CPU {mine:.3f} ms a request, {mine / health:.1f}x /healthz's")
    for name in ("unique", "repeated"):
        ratio = by_name[name].rps / by_name["healthz"].rps
        target = (
            f" (target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})" if name == "unique" else ""
        )
        print(f"{name}-plan estimate rps / healthz rps = {ratio:.2f}{target}")
    print_floor(by_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
