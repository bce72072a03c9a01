"""GET /healthz and GET /metrics (Prometheus text format, hand-written)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.http.metrics import Metrics

SAMPLE = re.compile(r'^([a-z_]+)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+)$')


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    client.get("/api/v1/estimate", params={"model": "meta-llama/Llama-2-7b-hf"})
    client.get("/api/v1/estimate", params={"model": "meta-llama/Llama-2-7b-hf", "rank": 8})
    client.get("/api/v1/estimate", params={"model": "meta-llama/Llama-2-7b-hf", "rank": 0})
    client.get("/api/v1/models/meta-llama/Llama-2-7b-hf")
    client.get("/api/v1/models/nobody/nothing")
    client.get("/static/style.css")
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(response.text)
    assert got['gpuplan_http_requests_total{route="/api/v1/estimate",method="GET",status="200"}'] == 2
    assert got['gpuplan_http_requests_total{route="/api/v1/estimate",method="GET",status="422"}'] == 1
    assert got['gpuplan_http_requests_total{route="/api/v1/models/{org}/{name}",method="GET",status="200"}'] == 1
    assert got['gpuplan_http_requests_total{route="/api/v1/models/{org}/{name}",method="GET",status="404"}'] == 1
    assert got['gpuplan_http_requests_total{route="/static",method="GET",status="200"}'] == 1
    assert got['gpuplan_http_requests_total{route="unmatched",method="GET",status="404"}'] == 1
    assert got["gpuplan_estimates_total"] == 2
    assert got['gpuplan_hub_fetches_total{outcome="model-not-found"}'] == 1
    count = got['gpuplan_http_request_duration_seconds_count{route="/api/v1/estimate",method="GET"}']
    assert count == 3
    assert got['gpuplan_http_request_duration_seconds_bucket{route="/api/v1/estimate",method="GET",le="+Inf"}'] == 3


def test_histogram_buckets_are_cumulative_and_labels_escaped() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.003, 0.2, 20.0):
        metrics.observe_request('/a"b\\c', "GET", 200, seconds)
    metrics.count_hub_fetch("ok")
    text = metrics.render()
    got = samples(text)
    label = 'route="/a\\"b\\\\c",method="GET"'
    buckets = [v for k, v in got.items() if k.startswith(f"gpuplan_http_request_duration_seconds_bucket{{{label}")]
    assert buckets == sorted(buckets) and buckets[0] == 1 and buckets[-1] == 4
    assert got[f"gpuplan_http_request_duration_seconds_count{{{label}}}"] == 4
    assert got['gpuplan_hub_fetches_total{outcome="ok"}'] == 1
