"""HTML routes in-process: template names and contexts, the result page's contents, errors as HTML."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from app.catalog import catalog_ids, load_spec
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.errors import StoreError
from app.web.templating import STATIC_DIR
from tests.compare.helpers import PDF_PROBLEM
from tests.webapp import FakeStore, build_app, make_record

LLAMA = "meta-llama/Llama-2-7b-hf"


def esc(text: str) -> str:
    return str(escape(text))


def test_index_is_one_get_form_with_the_qlora_defaults(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.template.name == "index.html"  # type: ignore[attr-defined]
    form = response.context["form"]  # type: ignore[attr-defined]
    values = form["values"]
    assert values == {
        "model": "",
        "method": "qlora",
        "quant": "",  # auto: nf4 for qlora
        "double_quant": "true",
        "dtype": "bf16",
        "autocast": "false",
        "rank": "16",
        "alpha": "32",
        "dropout": "0.05",
        "targets": "all-linear",
        "dora": "false",
        "rslora": "false",
        "seq_len": "2048",
        "batch_size": "1",
        "gradient_checkpointing": "true",
        "checkpointing": "every-layer",
        "reentrant": "false",
        "checkpoint_every": "1",
        "checkpoint_offload": "false",
        "grad_accum_steps": "1",
        "packing": "false",
        "keep_logits": "false",
        "loop": "trainer",
        "fused_cross_entropy": "false",
        "router_aux_loss": "false",
        "safe": "",  # the verdict option: the server's setting
        "optimizer": "",  # auto: adamw for full, paged_adamw_32bit for LoRA/QLoRA
        "attn": "sdpa",
        "gpus": "1",
        "sharding": "none",
        "fsdp_version": "2",
        "fsdp_units": "accelerate",  # FSDP2 only: accelerate 1.14+'s embedding and tail units
        "fsdp_backward_prefetch": "none",  # FSDP1 only: what TrainingArguments passes
        "zero_buckets": "deepspeed",  # DeepSpeed's own defaults (a config's "auto" is read on import)
        "offload": "false",
        "fsdp_mixed_precision": "false",
        "fsdp_reduce_dtype": "param",
        "device": "cuda",
        "mxfp4": "dequantize",  # gpt-oss's experts as the fine-tuning cookbook loads them
        "stack": "transformers-5",
        "strict": "false",
    }
    assert form["catalog_ids"] == catalog_ids()
    page = response.text
    assert page.count('<form class="planner"') == 1 and 'method="get" action="/plan"' in page
    # and the config import box (tests/web/test_import_box.py) and the config.json box (test_model_config_box.py)
    assert page.count("<form") == 3
    assert '<datalist id="catalog-models">' in page and f'<option value="{LLAMA}">' in page
    assert "<script" not in page  # works without JavaScript
    for name in TrainingPlan.model_fields:
        assert f'name="{name}"' in page and f'id="help-{name}"' in page
        assert f'<label for="{name}">' in page
    # the help text of every field is TrainingPlan's own description
    for group in form["groups"]:
        for field in group[1]:
            assert field.help == TrainingPlan.model_fields[field.name].description


def test_number_inputs_carry_the_plan_limits(client: TestClient) -> None:
    page = client.get("/").text
    assert re.search(r'name="seq_len" type="number" value="2048"\s+min="1" max="1048576" step="1"', page)
    assert re.search(r'name="batch_size" type="number" value="1"\s+min="1" max="4096"', page)


def test_result_page_context_and_contents(client: TestClient) -> None:
    response = client.get("/plan", params={"model": LLAMA, "rank": "32", "seq_len": "4096", "quant": ""})
    assert response.status_code == 200
    assert response.template.name == "plan.html"  # type: ignore[attr-defined]
    ctx = response.context  # type: ignore[attr-defined]
    spec = load_spec(LLAMA)
    assert spec is not None
    expected = estimate(spec, TrainingPlan(rank=32, seq_len=4096))
    assert ctx["est"] == expected
    assert ctx["rec"].recommended is not None
    assert ctx["fit"].gpu == ctx["rec"].recommended and ctx["fit"].batch_size.value >= 1
    assert ctx["comparable"] is None
    assert ctx["permalink"] == f"/plan?model={LLAMA.replace('/', '%2F')}&rank=32&seq_len=4096"
    page = response.text
    total = f"{expected.device_bytes / 1024**3:,.2f} GiB"
    assert f'<strong id="total">{total}</strong>' in page
    assert f"Fits on 1 × {ctx['rec'].recommended}, the cheapest run" in page
    assert 'data-state="fits"' in page and "Fits with headroom" in page
    assert page.index('id="verdict"') < page.index('id="chart"')  # verdict at the top
    assert '<figure class="chart" id="chart"><div class="chart-wide"><svg' in page
    assert '<div class="chart-narrow"><svg' in page  # the phone layout of the same chart
    for term in expected.breakdown:
        assert f'<tr data-term="{term.term}">' in page and esc(term.note) in page
    assert page.count('class="segment"') == 2 * sum(1 for t in expected.breakdown if t.bytes > 0)  # wide + narrow
    assert page.count('<tr class="fits') + page.count('<tr class="nofit') == len(ctx["rec"].tiers)
    assert "No comparable measured runs yet: none of this method on 1 GPU." in page
    assert "LlamaForCausalLM" in page and f"{spec.num_params:,}" in page and "bundled catalog config" in page
    assert "@media print" in (STATIC_DIR / "style.css").read_text()


def test_embed_snippet_and_exports_work(client: TestClient) -> None:
    response = client.get("/plan", params={"model": LLAMA})
    ctx = response.context  # type: ignore[attr-defined]
    assert ctx["embed"].startswith('<img src="/api/v1/estimate?model=')  # relative: no GPUPLAN_PUBLIC_URL
    assert esc(ctx["embed"]) in response.text  # shown as text to copy, not as markup
    media = {"Markdown": "text/markdown", "CSV": "text/csv", "SVG": "image/svg+xml", "JSON": "application/json"}
    # the printed result page (app/web/pdf.py); 501 problem+json where WeasyPrint's Pango is missing
    media["PDF"] = "application/pdf" if PDF_PROBLEM is None else "application/problem+json"
    for label, href in ctx["exports"]:
        assert f'href="{esc(href)}"' in response.text
        exported = client.get(href)
        assert exported.status_code in (200, 501) and exported.headers["content-type"].startswith(media[label])
    src = urlsplit(ctx["embed"].split('"')[1])
    assert client.get(f"{src.path}?{src.query}").headers["content-type"] == "image/svg+xml"


def test_the_permalink_reproduces_the_page(client: TestClient) -> None:
    first = client.get(
        "/plan",
        params={
            "model": LLAMA,
            "method": "lora",
            "quant": "",
            "targets": "q_proj,v_proj",
            "dora": "true",
            "alpha": "16",
        },
    )
    link = first.context["permalink"]  # type: ignore[attr-defined]
    assert dict(parse_qsl(urlsplit(link).query)) == {
        "model": LLAMA,
        "method": "lora",
        "quant": "none",
        "alpha": "16",
        "targets": "q_proj,v_proj",
        "dora": "true",
    }
    second = client.get(link)
    assert second.context["est"] == first.context["est"]  # type: ignore[attr-defined]


def test_comparable_runs_from_the_store(tmp_path: Path) -> None:
    store = FakeStore(
        [
            make_record(estimated_peak_bytes=1_050_000_000, verified=True),
            make_record(estimated_peak_bytes=980_000_000, verified=True),
            make_record(model_type="qwen2", estimated_peak_bytes=1_500_000_000, verified=True),
            make_record(estimated_peak_bytes=9_000_000_000),  # an unverified upload: never quoted
        ]
    )
    with TestClient(build_app(tmp_path, store=store)) as client:
        page = client.get("/plan", params={"model": LLAMA})
    comparable = page.context["comparable"]  # type: ignore[attr-defined]
    assert comparable.count == 2 and comparable.scope == "model_type" and comparable.max_abs_error_pct == 5.0
    text = re.sub(r"\s+", " ", page.text)
    assert "On <strong>2</strong> comparable measured runs (as the fake store matched; CUDA)" in text
    assert 'id="cuda-caveat"' not in text  # the runs are CUDA runs
    assert page.context["band"].band is None  # type: ignore[attr-defined]
    assert "No uncertainty band: only 2 comparable measured runs: a band needs at least 3" in text
    assert "gpuplan was within <strong>5.0 %</strong>" in text


def test_html_errors_match_the_api_problem(client: TestClient) -> None:
    cases = [
        {"model": LLAMA, "rank": "0"},
        {"model": LLAMA, "method": "lora", "quant": "nf4"},
        {"model": "nobody/nothing"},
        {"model": "not a model id"},
        {"model": LLAMA, "targets": "qkv_proj"},
    ]
    for params in cases:
        page = client.get("/plan", params=params)
        api = client.get("/api/v1/estimate", params=params)
        assert page.status_code == api.status_code >= 400
        assert page.template.name == "error.html"  # type: ignore[attr-defined]
        problem = page.context["problem"]  # type: ignore[attr-defined]
        body = api.json()
        assert (problem.type, problem.title, problem.status, problem.detail) == (
            body["type"],
            body["title"],
            body["status"],
            body["detail"],
        )
        assert [e.model_dump() for e in problem.errors] == body["errors"]
        # the page says the same in the form's words: each field's message (at its label), else the detail
        shown = [esc(e["message"]) for e in body["errors"]] or [esc(body["detail"])]
        assert all(text in page.text for text in shown)
        assert page.context["form"]["values"]["model"] == params["model"]  # type: ignore[attr-defined]


def test_missing_model_and_unknown_pages(client: TestClient) -> None:
    page = client.get("/plan")
    assert page.status_code == 422 and '<p class="detail">Model: Field required</p>' in page.text
    missing = client.get("/no-such-page")
    assert missing.status_code == 404 and missing.context["form"] is None  # type: ignore[attr-defined]


def test_calibrations_page_without_a_store_is_a_503_page(client: TestClient) -> None:
    page = client.get("/calibrations")
    assert page.status_code == 503 and page.template.name == "error.html"  # type: ignore[attr-defined]
    assert "Store not configured" in page.text


def test_calibrations_page_lists_runs_and_plots_them(tmp_path: Path) -> None:
    records = [
        make_record(),
        make_record(device="cpu", device_name=None, measured_reserved_bytes=None, model_id="a/<b>"),
    ]
    with TestClient(build_app(tmp_path, store=FakeStore(records))) as client:
        page = client.get("/calibrations")
    assert page.status_code == 200 and page.template.name == "calibrations.html"  # type: ignore[attr-defined]
    assert len(page.context["page"].records) == 2  # type: ignore[attr-defined]
    assert page.text.count('class="point"') == 2
    assert "+5.0 %" in page.text and "NVIDIA H200" in page.text and "torch 2.13.0" in page.text
    assert "a/&lt;b&gt;" in page.text and "a/<b>" not in page.text


@pytest.mark.parametrize("path", ["/", "/plan?model=meta-llama/Llama-2-7b-hf", "/no-such-page"])
def test_pages_link_the_stylesheet(client: TestClient, path: str) -> None:
    page = client.get(path).text
    assert 'href="/static/style.css"' in page and "testserver" not in page  # relative URLs only
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_verdicts_for_cpu_multi_gpu_and_no_fit(client: TestClient) -> None:
    cpu = client.get("/plan", params={"model": LLAMA, "device": "cpu", "optimizer": "adamw"})
    assert cpu.status_code == 200 and cpu.context["rec"] is None and cpu.context["fit"] is None  # type: ignore[attr-defined]
    assert "CPU reference plan: no GPU recommendation." in cpu.text
    big = client.get(
        "/plan",
        params={"model": "meta-llama/Llama-2-70b-hf", "method": "full", "optimizer": "adamw", "sharding": "zero3"},
    )
    rec = big.context["rec"]  # type: ignore[attr-defined]
    assert rec.recommended_gpus > 1
    text = re.sub(r"\s+", " ", big.text)
    assert f"needs {rec.recommended_gpus} × {rec.recommended} under sharding zero3" in text
    assert big.context["verdict"].state == "does_not_fit" and 'data-state="does_not_fit"' in text  # type: ignore[attr-defined]
    assert big.context["fit"].gpus == rec.recommended_gpus  # type: ignore[attr-defined]
    none = client.get(
        "/plan",
        params={"model": "meta-llama/Llama-2-70b-hf", "method": "full", "optimizer": "adamw", "sharding": "ddp"},
    )
    assert none.context["rec"].recommended is None and none.context["fit"] is None  # type: ignore[attr-defined]
    assert "Does not fit: no tier holds it: every DDP replica holds the whole model" in none.text


def test_a_failing_store_does_not_break_the_result_page(tmp_path: Path) -> None:
    class BrokenStore(FakeStore):
        def comparable(self, model_type: str, method: str, device: str, **layout: object) -> None:
            raise StoreError("the database is locked")

    with TestClient(build_app(tmp_path, store=BrokenStore())) as client:
        page = client.get("/plan", params={"model": LLAMA})
    assert page.status_code == 200 and page.context["store_problem"] == "the database is locked"  # type: ignore[attr-defined]
    assert "Measured runs cannot be read right now: the database is locked" in page.text


def test_the_safe_toggle_keeps_the_plan_and_the_run(client: TestClient) -> None:
    page = client.get("/plan", params={"model": LLAMA, "rank": "32", "train_tokens": "2000000000", "epochs": "2"})
    form = page.text[
        page.text.index('class="no-print safe-form"') : page.text.index("</form>", page.text.index("safe-form"))
    ]
    for name, value in (("rank", "32"), ("train_tokens", "2000000000"), ("epochs", "2"), ("safe", "true")):
        assert f'name="{name}" value="{value}"' in form
    assert page.context["safe"] is False  # type: ignore[attr-defined]  # the setting's default


def test_the_planner_form_offers_the_safe_answer_and_the_result_keeps_it(client: TestClient) -> None:
    html = client.get("/").text
    assert '<select id="safe" name="safe"' in html
    page = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf", "safe": "true"})
    assert page.status_code == 200
    assert page.context["safe"] is True  # type: ignore[attr-defined]
    assert '<option value="true" selected>' in page.text


def test_each_breakdown_term_says_what_backs_it(client: TestClient) -> None:
    """Issue 15: the result page says per term whether it is measured (CPU tracker, CPU ranks) or first-principles."""
    single = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf"}).text
    assert 'data-evidence="measured-cpu">(measured: CPU tracker)' in single
    assert 'data-evidence="first-principles">(first principles)' in single  # the CUDA overheads
    ddp = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf", "gpus": "2", "sharding": "ddp"}).text
    assert 'data-evidence="measured-cpu-ranks">(measured: CPU ranks)' in ddp
