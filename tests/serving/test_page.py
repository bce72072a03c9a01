"""The Serve page in-process: the form, the result (template and context), errors with the form kept."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_the_form_alone_has_serving_plans_defaults(client: TestClient) -> None:
    response = client.get("/serve")
    assert response.status_code == 200
    assert response.template.name == "serve.html"  # type: ignore[attr-defined]
    context = response.context  # type: ignore[attr-defined]
    assert context["est"] is None and context["values"]["engine"] == "vllm" and context["values"]["context"] == "4096"
    assert 'name="kv_dtype"' in response.text and 'action="/serve"' in response.text


def test_a_model_gives_the_estimate_tiers_and_exports(client: TestClient) -> None:
    response = client.get("/serve?model=meta-llama/Llama-3.1-8B&context=8192&gpu=L4")
    assert response.status_code == 200
    est = response.context["est"]  # type: ignore[attr-defined]
    assert est.term("kv_cache_bytes").bytes == 1_073_741_824
    assert response.context["permalink"] == "/serve?model=meta-llama%2FLlama-3.1-8B&context=8192&gpu=L4"  # type: ignore[attr-defined]
    html = response.text
    assert 'data-term="kv_cache_bytes"' in html and "first-principles" in html and 'id="tiers"' in html
    assert "/api/v1/inference?model=meta-llama%2FLlama-3.1-8B&amp;context=8192&amp;gpu=L4&amp;format=md" in html
    assert 'id="stretch"' in html and "vLLM v0.33.0" in html and "vllm/v1/core/kv_cache_planning.py" in html


def test_bad_input_keeps_the_form_and_names_the_field(client: TestClient) -> None:
    response = client.get("/serve?model=meta-llama/Llama-3.1-8B&tp=3&context=-1")
    assert response.status_code == 422
    problem = response.context["problem"]  # type: ignore[attr-defined]
    assert {e.field for e in problem.errors} == {"context"}  # field checks first; the model's after
    assert 'value="-1"' in response.text and 'action="/serve"' in response.text
    response = client.get("/serve?model=meta-llama/Llama-3.1-8B&tp=3")
    assert response.status_code == 422 and "32 attention heads" in response.text


def test_model_names_are_escaped(client: TestClient) -> None:
    response = client.get("/serve?model=%3Cscript%3Ealert(1)%3C/script%3E")
    assert response.status_code in (400, 404, 422)
    assert "<script>alert(1)" not in response.text


def test_the_training_result_links_to_serve_this_model(client: TestClient) -> None:
    html = client.get("/plan?model=meta-llama/Llama-3.1-8B").text
    link = 'id="serve-link" href="/serve?model=meta-llama%2FLlama-3.1-8B&amp;adapters=1&amp;adapter_rank=16'
    assert link + '&amp;train=model%3Dmeta-llama%252FLlama-3.1-8B"' in html  # the training plan comes along
