"""Fault script (not a test): every Hub misbehaviour against a real server, with the status and time to answer.

Starts the loopback Hub stand-in of tests/hub (a ThreadingHTTPServer misbehaving per repo id) and
`uvicorn app.main:create_app --factory` pointed at it (a temporary data dir, GPUPLAN_REQUEST_DEADLINE as
given), then asks GET /api/v1/estimate for one repo per fault: slow, drip, 500, 429 with a long
Retry-After, 401, 403, 404, bad JSON, oversized, redirect off-host, and the optional model info slow or
rate-limited. It prints each fault's status, seconds to answer and the problem's detail, and exits 1 when
an answer took longer than the deadline (plus a small slack for the loopback round trip) or was a 5xx other
than the 503/504 a deadline or an unavailable Hub gives.

Run: .venv/bin/python benchmarks/bench_faults.py [--deadline 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hub.conftest import FakeHub, _make_handler, _Server  # noqa: E402  (the tests' own Hub stand-in)

SLACK_S = 1.0
TOKEN = "hf_the_right_token"


@dataclass(frozen=True)
class Fault:
    name: str
    repo: str
    behaviour: dict[str, Any]
    expect: tuple[int, ...]


def faults(max_config_bytes: int) -> list[Fault]:
    oversized = b'{"model_type": "llama", "pad": "' + b"x" * (max_config_bytes + 1) + b'"}'
    return [
        Fault("slow config", "fault/slow", {"delay": 3600}, (503, 504)),
        Fault("drip (1 byte / 0.5 s)", "fault/drip", {"drip": 0.5}, (503, 504)),
        Fault("HTTP 500 every time", "fault/500", {"status": 500}, (503,)),
        Fault("429 + Retry-After 3600", "fault/429", {"status": 429, "retry_after": "3600"}, (503,)),
        Fault("401 (gated, no token)", "private/gated", {}, (403,)),
        Fault("403 (token rejected)", "fault/gated", {"token": TOKEN}, (403,)),
        Fault("404", "missing/model", {}, (404,)),
        Fault("bad JSON", "fault/badjson", {"body": b'{"model_type": "llama",'}, (422,)),
        Fault("oversized config", "fault/big", {"body": oversized}, (422,)),
        Fault("redirect off-host", "fault/redirect", {"redirect_to": "https://evil.example/config.json"}, (503,)),
        Fault("model info slow", "fault/info-slow", {"info_delay": 3600}, (200,)),
        Fault(
            "model info 429 + Retry-After 3600", "fault/info-429", {"info_status": 429, "retry_after": "3600"}, (200,)
        ),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    server = _Server(("127.0.0.1", 0), _make_handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def server(hub_url: str, deadline: float, data_dir: str) -> Iterator[str]:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        "NO_PROXY": "*",
        "GPUPLAN_DATA_DIR": data_dir,
        "HF_HOME": data_dir,
        "HF_ENDPOINT": hub_url,
        "HF_TOKEN": "hf_a_wrong_token",
        "HF_HUB_OFFLINE": "0",
        "GPUPLAN_REQUEST_DEADLINE": str(deadline),
        "GPUPLAN_HUB_TIMEOUT": "5",
        "GPUPLAN_HUB_RETRIES": "3",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        ends = time.monotonic() + 60
        while time.monotonic() < ends:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start within 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def run(deadline: float) -> list[tuple[Fault, int, float, str]]:
    """Every fault once; (fault, status, seconds, detail)."""
    from app.settings import Settings

    limit = Settings().hub_max_config_bytes
    out = []
    with tempfile.TemporaryDirectory(prefix="gpuplan-faults-") as data, fake_hub() as hub:
        chosen = faults(limit)
        for fault in chosen:
            if fault.repo.startswith("fault/"):  # unknown repos: 404, or 401 for private/ ones (as the Hub does)
                hub.add(fault.repo, **fault.behaviour)
        with server(hub.url, deadline, data) as base, httpx.Client(timeout=deadline * 3) as client:
            # warm: the forkserver and the inventory of the stand-in's config (every fault repo serves it), so
            # the times below are the faults' and not the first build's
            hub.add("warm/ok")
            client.get(base + "/api/v1/estimate", params={"model": "warm/ok"})
            for fault in chosen:
                start = time.monotonic()
                response = client.get(base + "/api/v1/estimate", params={"model": fault.repo})
                seconds = time.monotonic() - start
                body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
                detail = str(body.get("detail", "")) if response.status_code != 200 else "estimate answered"
                out.append((fault, response.status_code, seconds, detail))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=10.0, help="GPUPLAN_REQUEST_DEADLINE (default 10 s)")
    ns = parser.parse_args()
    results = run(ns.deadline)
    print(f"request deadline {ns.deadline:g} s, Hub timeout 5 s, 3 retries; each answer must come within it")
    print(f"{'fault':<36} {'status':>6} {'seconds':>8}  detail")
    bad = 0
    for fault, status, seconds, detail in results:
        ok = status in fault.expect and seconds <= ns.deadline + SLACK_S
        bad += not ok
        print(f"{fault.name:<36} {status:>6} {seconds:>8.2f}  {'' if ok else 'UNEXPECTED '}{detail[:110]}")
    print("every fault answered within the deadline" if not bad else f"{bad} fault(s) out of bounds")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
