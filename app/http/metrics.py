"""Process metrics in the Prometheus text format (0.0.4), kept by hand: counters and one latency histogram."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; the last bucket (+Inf) is implicit.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"


def _label(value: str) -> str:
    """Escape a label value as the text format asks: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics:
    """Counters of one process (each uvicorn worker keeps its own); safe to update from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._estimates = 0
        self._hub: Counter[str] = Counter()
        self._started = time.time()
        self._templates: dict[int, str] = {}

    def name_routes(self, prefix: str, routes: Iterable[BaseRoute]) -> None:
        """Remember the full path template of routes included under `prefix`.

        FastAPI may put the router's own route object (path without the prefix) into scope["route"].
        """
        for route in routes:
            path = getattr(route, "path", None)
            if isinstance(path, str):
                self._templates[id(route)] = prefix + path

    def route_template(self, scope: Scope) -> str:
        """The matched route's path template (`/api/v1/models/{org}/{name}`), so labels stay few."""
        route = scope.get("route")
        named = self._templates.get(id(route)) if route is not None else None
        if named is not None:
            return named
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        root, app_root = str(scope.get("root_path", "")), str(scope.get("app_root_path", ""))
        if root != app_root and root.startswith(app_root):  # inside a Mount such as /static
            return root.removeprefix(app_root)
        return UNMATCHED

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, method, str(status))] += 1
            self._latency.setdefault((route, method), _Histogram()).observe(seconds)

    def count_estimate(self) -> None:
        with self._lock:
            self._estimates += 1

    def count_hub_fetch(self, outcome: str) -> None:
        with self._lock:
            self._hub[outcome] += 1

    def render(self) -> str:
        """The whole registry as Prometheus text exposition."""
        with self._lock:
            requests = sorted(self._requests.items())
            latency = sorted((key, list(h.counts), h.total) for key, h in self._latency.items())
            estimates = self._estimates
            hub = sorted(self._hub.items())
        lines = [
            "# HELP gpuplan_http_requests_total HTTP requests by route template, method and status.",
            "# TYPE gpuplan_http_requests_total counter",
        ]
        for (route, method, status), n in requests:
            lines.append(
                f'gpuplan_http_requests_total{{route="{_label(route)}",method="{_label(method)}",status="{status}"}} {n}'
            )
        lines += [
            "# HELP gpuplan_http_request_duration_seconds Time from request start to response end, by route template.",
            "# TYPE gpuplan_http_request_duration_seconds histogram",
        ]
        for (route, method), counts, total in latency:
            labels = f'route="{_label(route)}",method="{_label(method)}"'
            running = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'gpuplan_http_request_duration_seconds_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f"gpuplan_http_request_duration_seconds_sum{{{labels}}} {total:.6f}")
            lines.append(f"gpuplan_http_request_duration_seconds_count{{{labels}}} {running}")
        lines += [
            "# HELP gpuplan_estimates_total Estimates computed (cache hits included).",
            "# TYPE gpuplan_estimates_total counter",
            f"gpuplan_estimates_total {estimates}",
            "# HELP gpuplan_hub_fetches_total Hub config fetches by outcome (ok, or the error's slug).",
            "# TYPE gpuplan_hub_fetches_total counter",
        ]
        lines += [f'gpuplan_hub_fetches_total{{outcome="{_label(outcome)}"}} {n}' for outcome, n in hub]
        lines += [
            "# HELP gpuplan_process_start_time_seconds Start time of the process since the Unix epoch.",
            "# TYPE gpuplan_process_start_time_seconds gauge",
            f"gpuplan_process_start_time_seconds {self._started:.3f}",
        ]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Times every HTTP request and counts it by route template, method and final status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(
                self.metrics.route_template(scope), str(scope.get("method", "")), status, time.perf_counter() - start
            )
