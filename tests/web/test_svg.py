"""The server-rendered SVG charts: well-formed, proportional, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.gpus import find_tier, recommend
from app.core.plan import TrainingPlan
from app.core.result import Estimate
from app.exports.svg import Point, breakdown_chart, scatter_chart, term_colours

NS = {"svg": "http://www.w3.org/2000/svg"}


def llama_estimate(**plan: object) -> Estimate:
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    return estimate(spec, TrainingPlan(**plan))  # type: ignore[arg-type]


def test_breakdown_segments_are_proportional_and_stacked() -> None:
    est = llama_estimate()
    root = ET.fromstring(breakdown_chart(est))
    segments = root.findall(".//svg:rect[@class='segment']", NS)
    terms = [t for t in est.breakdown if t.bytes > 0]
    assert [s.get("data-term") for s in segments] == [t.term for t in terms]
    widths = [float(s.get("width", 0)) for s in segments]
    total_width = sum(widths)
    for width, term in zip(widths, terms, strict=True):
        assert width == pytest.approx(max(total_width * term.bytes / est.device_bytes, 0.5), abs=0.05)
    xs = [float(s.get("x", 0)) for s in segments]
    assert xs == sorted(xs)
    assert {s.get("fill") for s in segments} == set(term_colours(est).values())


def test_recommended_budget_line_and_legend() -> None:
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    est = estimate(spec, TrainingPlan())
    rec = recommend(spec, est, 0.10)
    text = breakdown_chart(est, rec, standalone=True)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"')
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.find(".//svg:line", NS) is not None
    assert f"{rec.recommended} budget" in text
    legend = [t.text for t in root.findall(".//svg:text[@class='legend']", NS)]
    assert len(legend) == len([t for t in est.breakdown if t.bytes > 0])
    assert tier_name_ok(rec.recommended)


def tier_name_ok(name: str | None) -> bool:
    return name is not None and find_tier(name) is not None


def test_text_in_charts_is_escaped() -> None:
    est = llama_estimate().model_copy(update={"model": 'evil"/<script>&'})
    text = breakdown_chart(est)
    assert "<script>" not in text and "&lt;script&gt;" in text
    ET.fromstring(text)  # still well-formed
    scatter = scatter_chart([Point(estimated=10**9, measured=9 * 10**8, device="cuda", label="<b>&")])
    assert "<b>" not in scatter and "&lt;b&gt;&amp;" in scatter
    ET.fromstring(scatter)


def test_scatter_has_log_axes_and_a_point_per_run() -> None:
    points = [
        Point(estimated=2 * 10**6, measured=10**6, device="cpu", label="tiny"),
        Point(estimated=8 * 10**10, measured=7 * 10**10, device="cuda", label="big"),
    ]
    root = ET.fromstring(scatter_chart(points))
    circles = root.findall(".//svg:circle[@class='point']", NS)
    assert len(circles) == 2
    labels = {t.text for t in root.findall(".//svg:text", NS)}
    assert {"1 MB", "100 GB", "measured peak", "estimated peak"} <= labels
    # the bigger run sits further right and higher up
    (small, big) = circles
    assert float(big.get("cx", 0)) > float(small.get("cx", 0)) and float(big.get("cy", 0)) < float(small.get("cy", 0))
    empty = ET.fromstring(scatter_chart([]))
    assert any(t.text == "no measured runs yet" for t in empty.findall(".//svg:text", NS))
