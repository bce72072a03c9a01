"""The procurement report: training and serving side by side on the page, its Markdown, JSON, PDF and CLI.

Every number asserted here is computed in the test from estimate()/recommend() and plan_serving(), never typed in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient

from app import catalog
from app.cli import main
from app.core.estimate import estimate
from app.core.gpus import recommend
from app.core.plan import TrainingPlan
from app.core.units import GIB
from app.serving.estimate import plan_serving
from app.serving.plan import ServingPlan
from app.serving.sources import layout_for
from tests.webapp import assert_problem

MODEL = "meta-llama/Llama-3.1-8B"
TRAIN = f"model={MODEL}&rank=32"  # method qlora is the default
SERVE = f"model={MODEL}&adapters=1&context=8192&concurrency=16"  # ServingPlan's field order
QUERY = urlencode([("train", TRAIN), ("serve", SERVE)])


def expected() -> tuple[int, tuple[str, int], int, tuple[str, int]]:
    """Training device bytes and recommended GPUs; serving device bytes and recommended GPUs, from the core."""
    spec = catalog.load_spec(MODEL)
    assert spec is not None
    est = estimate(spec, TrainingPlan(method="qlora", rank=32))
    rec = recommend(spec, est, 0.10)
    best = rec.options[0]
    plan = ServingPlan(context=8192, concurrency=16, adapters=1)
    serving = plan_serving(spec, plan, layout_for(spec), 0.10)
    srec = serving.recommendations
    assert srec is not None and srec.recommended and srec.recommended_gpus
    return est.device_bytes, (best.gpu, best.gpus), serving.device_bytes, (srec.recommended, srec.recommended_gpus)


def test_the_page_shows_both_halves_and_one_purchase_line(client: TestClient) -> None:
    train_bytes, (tgpu, tcount), serve_bytes, (sgpu, scount) = expected()
    response = client.get(f"/report?{QUERY}")
    assert response.status_code == 200, response.text
    assert response.template.name == "report.html"  # type: ignore[attr-defined]
    purchase = response.context["purchase"]  # type: ignore[attr-defined]
    assert purchase.rows == (("training", tcount, tgpu), ("serving", scount, sgpu))
    assert purchase.total_gpus == tcount + scount
    assert f"training on {tcount} x {tgpu} for " in purchase.line and f"serving on {scount} x {sgpu}" in purchase.line
    html = response.text
    assert f"{train_bytes / GIB:,.2f} GiB" in html and f"{serve_bytes / GIB:,.2f} GiB" in html
    assert 'id="train-terms"' in html and 'data-term="kv_cache_bytes"' in html and "measured-cpu" in html
    assert "vllm/v1/worker/gpu_worker.py" in html  # the serving terms carry their sources
    assert "vLLM v0.33.0" in html and "vllm/v1/core/kv_cache_planning.py" in html  # the pinned tag and its files
    assert "Stack modelled" in html and "transformers " in html and "vLLM" in html
    assert response.context["permalink"] == f"/report?{QUERY}"  # type: ignore[attr-defined]


def test_markdown_and_json_say_the_same_numbers(client: TestClient) -> None:
    train_bytes, (tgpu, tcount), serve_bytes, (sgpu, scount) = expected()
    md = client.get(f"/report?{QUERY}&format=md")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text == client.get(f"/api/v1/report?{QUERY}&format=md").text
    assert f"**Per GPU: {train_bytes / GIB:,.2f} GiB**" in md.text and f"{serve_bytes / GIB:,.2f} GiB" in md.text
    assert f"{tcount + scount} GPUs in all" in md.text and f"training on {tcount} x {tgpu}" in md.text
    body = client.get(f"/api/v1/report?{QUERY}").json()
    assert body["train"]["estimate"]["device_bytes"] == train_bytes
    assert body["serve"]["estimate"]["device_bytes"] == serve_bytes
    assert body["purchase"]["gpus"] == [
        {"for": "training", "gpus": tcount, "gpu": tgpu},
        {"for": "serving", "gpus": scount, "gpu": sgpu},
    ]
    assert body["purchase"]["total_gpus"] == tcount + scount
    assert body["serve"]["estimate"]["vllm_version"] == body["serve"]["stack"]
    assert dict(parse_qsl(urlsplit(body["permalink"]).query)) == {"train": TRAIN, "serve": SERVE}


def test_one_half_alone_is_a_report_too(client: TestClient) -> None:
    body = client.get("/api/v1/report", params={"serve": SERVE}).json()
    assert body["train"] is None and [g["for"] for g in body["purchase"]["gpus"]] == ["serving"]


def test_errors_name_the_half_and_the_field(client: TestClient) -> None:
    bad = urlencode([("train", f"model={MODEL}&method=qlora&rank=0"), ("serve", f"model={MODEL}&context=0")])
    problem = assert_problem(client.get(f"/api/v1/report?{bad}"), 422)
    assert {e["field"] for e in problem["errors"]} == {"train.rank", "serve.context"}
    assert problem["detail"].startswith("train: rank: ") and "serve: context: " in problem["detail"]
    problem = assert_problem(client.get("/api/v1/report", params={"serve": f"model={MODEL}&tp=3"}), 422)
    assert problem["errors"][0]["field"] == "serve.tp" and problem["detail"].startswith("serve: tp: 32 attention")
    problem = assert_problem(client.get("/api/v1/report", params={"serve": "model=nobody/nothing"}), 404)
    assert problem["detail"].startswith("serve: ")
    problem = assert_problem(client.get("/api/v1/report", params={"serve": f"model={MODEL}&colour=red"}), 422)
    assert problem["errors"] == [{"field": "serve.colour", "message": problem["errors"][0]["message"]}]
    assert_problem(client.get("/api/v1/report"), 422)
    assert_problem(client.get("/api/v1/report", params={"serve": SERVE, "plan": "x"}), 422)
    page = client.get("/report", params={"train": f"model={MODEL}&seq_len=-4"})
    assert page.status_code == 422 and "train: seq_len: " in page.text and "Traceback" not in page.text


def test_the_serve_page_links_to_the_report_with_the_training_plan_carried(client: TestClient) -> None:
    plan = client.get("/plan", params={"model": MODEL, "method": "qlora", "rank": "32"})
    serve_link = next(a.split('"')[0] for a in plan.text.split('id="serve-link" href="')[1:2]).replace("&amp;", "&")
    carried = dict(parse_qsl(urlsplit(serve_link).query))
    assert dict(parse_qsl(carried["train"])) == {"model": MODEL, "rank": "32"}  # qlora is the default method
    serve = client.get(serve_link + "&context=8192")
    assert serve.status_code == 200 and 'type="hidden" name="train"' in serve.text
    link = serve.context["report_link"]  # type: ignore[attr-defined]
    halves = dict(parse_qsl(urlsplit(link).query))
    assert halves["train"] == carried["train"]
    assert dict(parse_qsl(halves["serve"])) == {
        "model": MODEL,
        "adapters": "1",
        "adapter_rank": "32",
        "context": "8192",
    }
    report = client.get(link)
    assert report.status_code == 200 and report.context["train"].planned.estimate.plan.rank == 32  # type: ignore[attr-defined]


def _pdf_text(data: bytes) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return len(reader.pages), " ".join(page.extract_text() for page in reader.pages)


def test_the_pdf_is_the_page_in_at_most_two_pages(client: TestClient) -> None:
    train_bytes, (tgpu, tcount), serve_bytes, (sgpu, scount) = expected()
    response = client.get(f"/api/v1/report?{QUERY}&format=pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert "gpuplan-report-Llama-3.1-8B.pdf" in response.headers["content-disposition"]
    pages, text = _pdf_text(response.content)
    assert 1 <= pages <= 2
    flat = " ".join(text.split())
    assert f"{train_bytes / GIB:,.2f} GiB" in flat and f"{serve_bytes / GIB:,.2f} GiB" in flat
    assert f"serving on {scount} x {sgpu}" in flat and f"training on {tcount} x {tgpu}" in flat


def test_the_cli_writes_markdown_json_and_pdf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_bytes, (_, tcount), serve_bytes, (sgpu, scount) = expected()
    argv = ["report", "--train", f"model={MODEL} method=qlora rank=32", "--serve", SERVE.replace("&", " ")]
    assert main(argv) == 0
    md = capsys.readouterr().out
    assert md.startswith("# GPU procurement report") and f"serving on {scount} x {sgpu}" in md
    assert main([*argv, "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (
        body["train"]["estimate"]["device_bytes"] == train_bytes and body["purchase"]["total_gpus"] == tcount + scount
    )
    out = tmp_path / "report.pdf"
    assert main([*argv, "--format", "pdf", "-o", str(out)]) == 0
    pages, text = _pdf_text(out.read_bytes())
    assert pages <= 2 and f"{serve_bytes / GIB:,.2f} GiB" in " ".join(text.split())


def test_the_cli_refuses_bad_halves_in_one_line_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--train", f"model={MODEL} rank=0", "--serve", f"model={MODEL} context=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train: rank:" in err and "serve: context:" in err
    assert main(["report"]) == 2
    assert "give the training plan" in capsys.readouterr().err
    assert main(["report", "--serve", SERVE, "--format", "pdf"]) == 2
    assert "--output" in capsys.readouterr().err
