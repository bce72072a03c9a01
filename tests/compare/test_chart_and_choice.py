"""One scale for every bar, and the GPU each plan is judged on (pinned tier, recommended option, what stops it)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.compare.svg import LEFT, RIGHT, WIDTH
from tests.compare.helpers import MODEL, PLANS

API = "/api/v1/compare"


def test_every_bar_is_drawn_to_the_same_scale(client: TestClient) -> None:
    params = [("plan", p) for p in PLANS]
    body = client.get(API, params=params).json()
    svg = client.get(API, params=[*params, ("format", "svg")]).text
    span = WIDTH - LEFT - RIGHT
    groups = re.findall(r'<g class="plan" data-plan="(\d)">(.*?)</g>', svg, re.S)
    assert [int(n) for n, _ in groups] == [1, 2, 3]
    for (_, group), plan in zip(groups, body["plans"], strict=True):
        widths = [float(w) for w in re.findall(r'class="segment"[^>]*width="([\d.]+)"', group)]
        drawn = sum(widths)
        assert abs(drawn - span * plan["device_bytes"] / body["scale_bytes"]) < 0.5 * len(widths) + 0.01
        budget = re.search(r'class="budget" x1="([\d.]+)"', group)
        assert budget is not None
        assert abs(float(budget.group(1)) - (LEFT + span * plan["choice"]["budget_bytes"] / body["scale_bytes"])) < 0.01
    colours = {}
    for term, colour in re.findall(r'data-term="([a-z_]+)"[^>]*fill="(#[0-9A-Fa-f]+)"', svg):
        assert colours.setdefault(term, colour) == colour  # a term is one colour in every bar


def test_a_pinned_tier_that_cannot_hold_or_run_the_plan_says_so(client: TestClient) -> None:
    plans = [f"model={MODEL}&method=full&gpu=RTX 4090", f"model={MODEL}&gpu=T4", f"model={MODEL}&dtype=fp16&gpu=T4"]
    body = client.get(API, params=[("plan", p) for p in plans]).json()
    full, t4, t4_fp16 = (p["choice"] for p in body["plans"])
    assert full["fits"] is False and full["summary"].startswith("does not fit on 1 GPU of RTX 4090")
    tiers = body["plans"][0]["estimate"]["recommendations"]["tiers"]
    row = next(t for t in tiers if t["gpu"] == "RTX 4090")
    assert full["gpus"] == row["gpus_needed"] and f"needs {row['gpus_needed']} × RTX 4090" in full["summary"]
    assert t4["fits"] is False and t4["summary"].startswith("cannot run: no bf16") and t4["option"] is None
    assert t4_fp16["fits"] is True and t4_fp16["summary"].startswith("fits on 1 × T4")
    assert body["cheapest"] in (1, 3)  # plan 2 has no option on its tier


def test_a_cpu_plan_is_compared_without_a_gpu(client: TestClient) -> None:
    body = client.get(API, params=[("plan", PLANS[0]), ("plan", f"model={MODEL}&device=cpu&optimizer=adamw")]).json()
    cpu = body["plans"][1]["choice"]
    assert cpu == {
        "gpu": None,
        "gpus": None,
        "fits": False,
        "pinned": False,
        "budget_bytes": None,
        "summary": "CPU reference plan: no GPU recommendation",
        "option": None,
    }
    assert body["cheapest"] == 1
