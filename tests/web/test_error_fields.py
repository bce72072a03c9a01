"""The planner's error page: errors counted, each marked at its field with the form's label; the form's own
constraints (min, max, step, required) are TrainingPlan's."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.core.plan import TrainingPlan
from app.plan_input import bounds

MODEL = "meta-llama/Llama-2-7b-hf"


def test_several_errors_are_counted_and_marked_at_their_fields(client: TestClient) -> None:
    page = client.get("/plan", params={"model": MODEL, "method": "bad", "seq_len": "-1", "rank": "0", "dropout": "3"})
    assert page.status_code == 422
    problem = re.search(r'(?s)<section class="problem".*?</section>', page.text)
    assert problem is not None
    banner = problem.group(0)
    assert "4 problems" in banner and "more)" not in banner
    for label in ("Method", "LoRA rank r", "LoRA dropout", "Sequence length"):
        assert f">{label}</a>:" in banner
    assert "seq_len" not in re.sub(r'href="#seq_len"', "", banner)  # the form's label, not the field name
    marked = dict(re.findall(r'<strong class="field-error" id="error-(\w+)">([^<]*)</strong>', page.text))
    assert set(marked) == {"method", "rank", "dropout", "seq_len"}
    assert marked["seq_len"] == "Input should be greater than or equal to 1"
    assert page.text.count('aria-invalid="true"') == 4
    assert re.search(r'id="seq_len"[^>]*aria-describedby="error-seq_len help-seq_len" aria-invalid="true"', page.text)


def test_one_error_reads_with_its_label(client: TestClient) -> None:
    page = client.get("/plan", params={"model": MODEL, "batch_size": "0"})
    assert page.status_code == 422
    assert '<p class="detail">Micro-batch size: Input should be greater than or equal to 1</p>' in page.text
    assert page.text.count('aria-invalid="true"') == 1


def test_the_form_constraints_are_the_servers(client: TestClient) -> None:
    html = client.get("/").text
    assert re.search(r'<input id="model"[^>]*\brequired\b', html)
    for name, info in TrainingPlan.model_fields.items():
        if info.annotation not in (int, float):
            continue
        tag = re.search(rf'<input id="{name}"[^>]*>', html, re.S)
        assert tag is not None, name
        low, high = (float(v) if v is not None else None for v in bounds(info))
        shown = dict(re.findall(r'\b(min|max)="([^"]*)"', tag.group(0)))
        assert f'step="{"1" if info.annotation is int else "any"}"' in tag.group(0), name
        # what the browser lets through, the server takes, and the other way round: an exclusive bound
        # (alpha > 0, dropout < 1) is moved in, so the browser refuses the bound itself as the server does
        for edge, value in (("min", low), ("max", high)):
            if value is None:
                continue
            browser_edge = float(shown[edge])
            assert abs(browser_edge - value) <= 1e-6, name
            accepted = _accepts(name, browser_edge)
            assert accepted, (name, edge, browser_edge)
            assert _accepts(name, value) == (browser_edge == value), (name, edge)


def _accepts(name: str, value: float) -> bool:
    try:
        TrainingPlan.model_validate({name: int(value) if TrainingPlan.model_fields[name].annotation is int else value})
    except ValueError:
        return False
    return True
