"""The result page prices every option with its date, marks the cheapest and the fastest, and sizes the run."""

from __future__ import annotations

import re
from html import escape

from fastapi.testclient import TestClient

LLAMA = "meta-llama/Llama-2-7b-hf"


def test_the_result_page_shows_the_cost_of_each_option_with_its_date(client: TestClient) -> None:
    response = client.get("/plan", params={"model": LLAMA})
    assert response.status_code == 200
    rec = response.context["rec"]  # type: ignore[attr-defined]
    page = response.text
    options = page[page.index('id="options-table"') : page.index("</table>", page.index('id="options-table"'))]
    assert options.count('<tr class="option') == len(rec.options)
    for o in rec.options:
        if o.price is not None:  # each priced option: its cost and the price's date
            assert escape(o.price.label) in options and f"(as of {o.price.as_of.isoformat()})" in options
    first = rec.options[0]
    text = re.sub(r"\s+", " ", page)
    assert f"Fits on 1 × {first.gpu}, the cheapest run" in text
    assert f"at {escape(first.price.label)} for 100,000,000 training tokens" in text
    assert 'class="badge">fastest</span>' in options and "a first-principles model, not a measurement" in text
    assert (
        "40 % of the GPU&#39;s dense 16-bit peak (MFU)" in text or "40 % of the GPU's dense 16-bit peak (MFU)" in text
    )
    assert "cannot run: no bf16 (use fp16, or a GPU from Ampere on)" in text


def test_the_run_size_is_in_the_permalink_and_the_form(client: TestClient) -> None:
    response = client.get("/plan", params={"model": LLAMA, "rank": "32", "train_tokens": "2000000000", "epochs": "2"})
    assert response.status_code == 200
    ctx = response.context  # type: ignore[attr-defined]
    assert ctx["rec"].time_model.total_tokens == 4e9
    assert ctx["permalink"].endswith("&rank=32&train_tokens=2000000000&epochs=2")
    assert all(href.split("&format=")[0].endswith("train_tokens=2000000000&epochs=2") for _, href in ctx["exports"])
    page = response.text
    assert '<input type="hidden" name="rank" value="32">' in page
    assert 'name="train_tokens" type="number"' in page and 'value="2000000000"' in page
    assert "2,000,000,000 training tokens × 2 epochs" in page


def test_a_bad_run_size_is_an_error_page(client: TestClient) -> None:
    response = client.get("/plan", params={"model": LLAMA, "train_tokens": "0"})
    assert response.status_code == 422 and "train_tokens" in response.text
