"""The server-rendered SVG charts: well-formed, proportional, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.gpus import find_tier, recommend
from app.core.plan import TrainingPlan
from app.core.result import Estimate
from app.exports.scatter import Point, scatter_chart
from app.exports.svg import TERM_COLOURS, breakdown_chart, nice_step, term_colours

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
    scatter = scatter_chart([Point(estimated=10**9, measured=9 * 10**8, device="cuda", label="<b>&")])  # /calibrations
    assert "<b>" not in scatter and "&lt;b&gt;&amp;" in scatter
    ET.fromstring(scatter)


def test_scatter_has_log_axes_in_gib_and_a_point_per_run() -> None:
    points = [
        Point(estimated=2 * 10**6, measured=10**6, device="cpu", label="tiny"),
        Point(estimated=8 * 10**10, measured=7 * 10**10, device="cuda", label="big"),
    ]
    root = ET.fromstring(scatter_chart(points))
    circles = root.findall(".//svg:circle[@class='point']", NS)
    assert len(circles) == 2
    labels = {t.text for t in root.findall(".//svg:text", NS)}
    assert {"measured peak (GiB)", "estimated peak (GiB)"} <= labels
    # the bigger run sits further right and higher up
    (small, big) = circles
    assert float(big.get("cx", 0)) > float(small.get("cx", 0)) and float(big.get("cy", 0)) < float(small.get("cy", 0))
    empty = ET.fromstring(scatter_chart([]))
    assert any(t.text == "no measured runs match" for t in empty.findall(".//svg:text", NS))


def test_each_term_keeps_its_colour_whatever_the_plan() -> None:
    qlora, full = llama_estimate(), llama_estimate(method="full", optimizer="adamw")
    a, b = term_colours(qlora), term_colours(full)
    shared = set(a) & set(b)
    assert {"base_weight_bytes", "optimizer_state_bytes", "cuda_context_bytes"} <= shared
    assert all(a[t] == b[t] for t in shared)  # same term, same colour, at another position
    assert [t.term for t in full.breakdown if t.bytes > 0].index("optimizer_state_bytes") != [
        t.term for t in qlora.breakdown if t.bytes > 0
    ].index("optimizer_state_bytes")
    assert len(set(TERM_COLOURS.values())) == len(TERM_COLOURS)  # no two terms share a colour


@pytest.mark.parametrize(
    ("span_gib", "step"),
    [(12.8, 5.0), (7.3, 2.0), (100.0, 20.0), (457.0, 100.0), (0.3, 0.1), (180.0, 50.0), (1.0, 0.2)],
)
def test_axis_steps_are_round(span_gib: float, step: float) -> None:
    assert nice_step(span_gib) == pytest.approx(step)


def test_axis_ticks_sit_at_round_gib_values() -> None:
    root = ET.fromstring(breakdown_chart(llama_estimate()))  # 7.43 GiB, no budget line: ticks 0, 2, ..., 8
    ticks = [t.text for t in root.findall(".//svg:text[@class='tick']", NS)]
    assert ticks == ["0 GiB", "2 GiB", "4 GiB", "6 GiB", "8 GiB"]


@pytest.mark.parametrize("narrow", [False, True])
def test_the_chart_names_the_model_plan_and_gpu_count(narrow: bool) -> None:
    est = llama_estimate(method="full", optimizer="adamw", gpus=8, sharding="zero3")
    root = ET.fromstring(breakdown_chart(est, narrow=narrow))
    words = " ".join(t.text or "" for t in root.findall(".//svg:text", NS) if t.get("class") in ("title", "plan"))
    assert "meta-llama/Llama-2-7b-hf" in words and "per GPU on 8 GPUs (zero3)" in words
    assert "plan: full, bf16, seq 2048 x batch 1" in words and "8 GPUs, zero3" in words
    assert root.get("width") == ("360" if narrow else "760")
