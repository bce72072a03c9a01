"""GET /api/v1/calibrations and /calibrations: server-side filters, sort and pages on the real SQLite store."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.exports.scatter import Point, round_ticks, scatter_chart, tick_label
from app.store import Store
from tests.webapp import assert_problem, build_app, make_record

NS = {"svg": "http://www.w3.org/2000/svg"}
MEASURED = 1_000_000_000


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[TestClient]:
    """12 runs: 8 llama qlora on cuda (errors +1..+8 %), 4 qwen2 lora on cpu (errors -1..-4 %), one a day."""
    store = Store.open(f"sqlite:///{(tmp_path / 'store.sqlite3').as_posix()}")
    for day in range(1, 13):
        llama = day <= 8
        error = day if llama else -(day - 8)
        store.add_measurement(
            make_record(
                created_at=datetime(2025, 3, day, tzinfo=UTC),
                model_id="meta-llama/Llama-2-7b-hf" if llama else "Qwen/Qwen2-0.5B",
                model_type="llama" if llama else "qwen2",
                device="cuda" if llama else "cpu",
                plan={"method": "qlora" if llama else "lora", "rank": 16, "seq_len": 512 * day, "batch_size": 2},
                measured_peak_bytes=MEASURED,
                estimated_peak_bytes=MEASURED + MEASURED * error // 100,
                source="gpu-h200" if llama else "cpu-matrix",
            )
        )
    try:
        with TestClient(build_app(tmp_path, store=store)) as client:
            yield client
    finally:
        store.close()


def test_total_and_next_prev_links(paged: TestClient) -> None:
    first = paged.get("/api/v1/calibrations", params={"limit": 5})
    assert first.headers["x-total-count"] == "12"
    assert [r["created_at"][:10] for r in first.json()] == [f"2025-03-{d:02d}" for d in (12, 11, 10, 9, 8)]
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', first.headers["link"]))
    assert set(links) == {"next"} and "offset=5" in links["next"] and "limit=5" in links["next"]
    assert links["next"].startswith("/api/v1/calibrations?")  # relative: the Host header is never reflected
    last = paged.get(links["next"].replace("offset=5", "offset=10"))
    assert len(last.json()) == 2
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', last.headers["link"]))
    assert set(links) == {"prev"} and "offset=5" in links["prev"]


def test_filters_and_sort_run_in_the_store(paged: TestClient) -> None:
    qwen = paged.get("/api/v1/calibrations", params={"family": "qwen2", "sort": "-abs_error"})
    assert qwen.headers["x-total-count"] == "4"
    assert [r["error_pct"] for r in qwen.json()] == [-4.0, -3.0, -2.0, -1.0]
    worst = paged.get("/api/v1/calibrations", params={"sort": "-error", "limit": 2, "method": "qlora"})
    assert [r["error_pct"] for r in worst.json()] == [8.0, 7.0]
    assert paged.get("/api/v1/calibrations", params={"device": "cpu", "source": "gpu-h200"}).json() == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "size"}, "sort"),
        ({"offset": "-1"}, "offset"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"method": "prefix-tuning"}, "method"),
        ({"verified": "maybe"}, "verified"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_are_a_422_naming_the_parameter(paged: TestClient, params: dict[str, str], field: str) -> None:
    problem = assert_problem(paged.get("/api/v1/calibrations", params=params), 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    html = paged.get("/calibrations", params=params)
    assert html.status_code == 422 and field in html.text.lower()


def test_the_page_shows_what_each_run_measured_and_pages(paged: TestClient) -> None:
    page = paged.get("/calibrations", params={"limit": 5, "family": "llama"})
    assert page.status_code == 200
    rows = re.findall(r"<tr><td><code>", page.text)
    assert len(rows) == 5
    assert "Runs 1–5 of 8" in page.text and 'rel="next"' in page.text and 'rel="prev"' not in page.text
    assert "4,096" in page.text  # seq of the newest llama run (day 8: 512 x 8)
    for header in ("family", "method", "seq", "batch", "rank", "checkpoint", "est. GiB", "meas. GiB"):
        assert header in page.text
    assert page.text.count('class="point"') == 8  # the chart plots every match, not only this page
    assert "0.931" in page.text  # 1e9 bytes is 0.931 GiB: the table's unit is the chart's
    empty = paged.get("/calibrations", params={"family": "mistral"})
    assert "No measured run matches these filters" in empty.text


def test_the_chart_is_in_gib_with_round_ticks_and_a_legend_only_for_series_shown() -> None:
    points = [
        Point(estimated=9 * 10**7, measured=10**8, device="cpu", label="a"),
        Point(2 * 10**9, 2 * 10**9, "cpu", "b"),
    ]
    root = ET.fromstring(scatter_chart(points))
    texts = [t.text or "" for t in root.findall(".//svg:text", NS)]
    assert "measured peak (GiB)" in texts and "estimated peak (GiB)" in texts
    assert "cpu (2 runs)" in texts and not any(t.startswith("cuda") for t in texts)
    assert {"0.05", "0.1", "0.2", "0.5", "1", "2"} <= set(texts)
    width = float(root.get("width", 0))
    centred = [t for t in root.findall(".//svg:text[@text-anchor='middle']", NS) if t.get("transform") is None]
    for label in centred:  # the x ticks and the axis title stay inside the image (about 8 px per character)
        x, half = float(label.get("x", 0)), 4 * len(label.text or "")
        assert half <= x <= width - half, label.text
    assert round_ticks(0.0085, 1.92) == [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
    assert [tick_label(t) for t in (0.005, 0.02, 1.0, 20.0)] == ["0.005", "0.02", "1", "20"]
