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
from app.core.prices import Price, bundled_prices
from app.core.units import GIB
from app.exports.report import usd
from app.serving.estimate import plan_serving
from app.serving.plan import ServingPlan
from app.serving.sources import layout_for
from tests.webapp import assert_problem, build_app

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


def served(plan: ServingPlan) -> tuple[str, int, Price | None, Price | None]:
    """The recommended serving tier and count for `plan`, and the bundled table's on-demand and list rows for it."""
    spec = catalog.load_spec(MODEL)
    assert spec is not None
    rec = plan_serving(spec, plan, layout_for(spec), 0.10).recommendations
    assert rec is not None and rec.recommended and rec.recommended_gpus
    prices = bundled_prices()
    return rec.recommended, rec.recommended_gpus, prices.hourly(rec.recommended), prices.list_price(rec.recommended)


def training_cost() -> float:
    """The recommended training option's on-demand cost of the default run (bundled prices)."""
    spec = catalog.load_spec(MODEL)
    assert spec is not None
    est = estimate(spec, TrainingPlan(method="qlora", rank=32))
    cost = recommend(spec, est, 0.10).options[0].cost_usd
    assert cost is not None
    return cost


def test_the_page_shows_both_halves_and_one_purchase_line(client: TestClient) -> None:
    train_bytes, (tgpu, tcount), serve_bytes, (sgpu, scount) = expected()
    response = client.get(f"/report?{QUERY}")
    assert response.status_code == 200, response.text
    assert response.template.name == "report.html"  # type: ignore[attr-defined]
    purchase = response.context["purchase"]  # type: ignore[attr-defined]
    assert [(r.what, r.gpus, r.gpu) for r in purchase.rows] == [("training", tcount, tgpu), ("serving", scount, sgpu)]
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
    assert [(g["for"], g["gpus"], g["gpu"]) for g in body["purchase"]["gpus"]] == [
        ("training", tcount, tgpu),
        ("serving", scount, sgpu),
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


def test_the_serving_gpus_are_priced_per_hour_and_per_month_from_the_dated_table(client: TestClient) -> None:
    sgpu, scount, price, _ = served(ServingPlan(context=8192, concurrency=16, adapters=1))
    assert price is not None  # the bundled table prices this plan's tier
    per_hour, per_month = price.usd * scount, price.usd * scount * 24 * 30
    both = f"{usd(training_cost())} for the training run + {usd(per_month)} per 30-day month of serving"
    page = client.get(f"/report?{QUERY}")
    assert page.status_code == 200
    assert f"{scount} × {sgpu} at {price.label}" in page.text and f"as of {price.as_of.isoformat()}" in page.text
    assert f"{usd(per_month)}/month" in page.text and f"{usd(per_hour)}/h" in page.text and price.source in page.text
    assert f'<td colspan="3" id="purchase-cost">{both}</td>' in page.text
    md = client.get(f"/api/v1/report?{QUERY}&format=md").text
    assert f"~ {usd(per_month)}/month on demand" in md and f"priced: {both}." in md
    assert f"| serving | {scount} | {sgpu} | {price.label} | {usd(per_hour)}/h, {usd(per_month)}/month | - |" in md
    assert f"- {sgpu}: {price.label}, {price.source}" in md
    body = client.get(f"/api/v1/report?{QUERY}").json()
    cost = body["serve"]["cost"]
    assert cost["price"]["usd"] == price.usd and cost["price"]["as_of"] == price.as_of.isoformat()
    assert cost["per_hour_usd"] == pytest.approx(per_hour) and cost["per_month_usd"] == pytest.approx(per_month)
    assert body["purchase"]["cost"]["training_run_usd"] == pytest.approx(training_cost())
    assert body["purchase"]["cost"]["serving_per_month_usd"] == pytest.approx(per_month)
    assert body["purchase"]["cost"]["line"] == both and body["purchase"]["gpus"][1]["price"]["source"] == price.source
    a100 = bundled_prices().hourly("A100 80GB")
    assert a100 is not None and body["serve"]["tier_costs"]["A100 80GB"]["per_month_usd"] == pytest.approx(
        a100.usd * body["serve"]["tier_costs"]["A100 80GB"]["gpus"] * 720
    )
    _, text = _pdf_text(client.get(f"/api/v1/report?{QUERY}&format=pdf").content)
    flat = " ".join(text.split())
    assert f"{usd(per_month)}/month" in flat and " ".join(both.split()) in flat and price.as_of.isoformat() in flat


def test_a_listed_tier_shows_its_list_price_times_the_count(client: TestClient) -> None:
    plan = ServingPlan(context=8192, concurrency=8)
    sgpu, scount, price, listed = served(plan)
    assert price is not None and listed is not None  # the plan is chosen for a tier with a list price
    serve = f"model={MODEL}&context=8192&concurrency=8"
    body = client.get("/api/v1/report", params={"serve": serve}).json()
    assert body["serve"]["cost"]["gpu"] == sgpu and body["serve"]["cost"]["purchase_usd"] == pytest.approx(
        listed.usd * scount
    )
    assert body["purchase"]["cost"]["line"] is None  # one half alone: no two-figure total
    md = client.get("/api/v1/report", params={"serve": serve, "format": "md"}).text
    assert f"{scount} x {listed.label} = {usd(listed.usd * scount)}" in md and "priced:" not in md
    page = client.get("/report", params={"serve": serve}).text
    assert f"to buy: {scount} × {listed.label} = {usd(listed.usd * scount)}" in page


def test_a_tier_without_a_price_says_so_plainly(tmp_path: Path) -> None:
    sgpu, _, _, _ = served(ServingPlan(context=8192, concurrency=16, adapters=1))
    assert sgpu != "T4"
    row = {"gpu": "T4", "usd": 0.5, "provider": "Us", "as_of": "2026-01-02", "source": "https://example.test/p"}
    prices = tmp_path / "mine.json"
    prices.write_text(json.dumps({"replace_bundled": True, "prices": [row]}))
    with TestClient(build_app(tmp_path, prices_file=prices)) as client:
        body = client.get(f"/api/v1/report?{QUERY}").json()
        page = client.get(f"/report?{QUERY}").text
        md = client.get(f"/report?{QUERY}&format=md").text
    assert body["serve"]["cost"]["price"] is None and body["serve"]["cost"]["per_month_usd"] is None
    assert f"no dated price for {sgpu}" in body["purchase"]["line"] and body["purchase"]["cost"]["line"] is None
    assert f"no dated price for {sgpu}" in page and f"no dated price for {sgpu}" in md and "priced:" not in md
    tier_row = next(line for line in md.splitlines() if line.startswith(f"| {sgpu} | ") and line.count("|") == 5)
    assert tier_row.endswith(" | no dated price |")  # the serving tiers' table, the tier named by its row
    assert body["serve"]["tier_costs"]["T4"]["per_month_usd"] == pytest.approx(
        0.5 * body["serve"]["tier_costs"]["T4"]["gpus"] * 720
    )


def test_serve_months_prices_the_serving_period(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    _, scount, price, _ = served(ServingPlan(context=8192, concurrency=16, adapters=1))
    assert price is not None
    per_month = price.usd * scount * 720
    body = client.get(f"/api/v1/report?{QUERY}&serve_months=3").json()
    assert body["serve"]["cost"]["total_usd"] == pytest.approx(per_month * 3)
    assert body["purchase"]["cost"]["line"].endswith(f"({usd(per_month * 3)} for 3 months)")
    assert dict(parse_qsl(urlsplit(body["permalink"]).query))["serve_months"] == "3"
    assert "serve_months" not in body["permalink"].split("?")[1].split("&serve=")[0]
    page = client.get(f"/report?{QUERY}&serve_months=3")
    assert page.status_code == 200 and f"{usd(per_month * 3)} for 3 months" in page.text
    problem = assert_problem(client.get(f"/api/v1/report?{QUERY}&serve_months=0"), 422)
    assert problem["errors"][0]["field"] == "serve_months"
    problem = assert_problem(client.get("/api/v1/report", params={"train": TRAIN, "serve_months": "2"}), 422)
    assert "give serve=" in problem["detail"]
    bad = {"serve": f"model={MODEL}&context=0", "serve_months": "lots"}
    problem = assert_problem(client.get("/api/v1/report", params=bad), 422)
    assert {e["field"] for e in problem["errors"]} == {"serve.context", "serve_months"}
    page = client.get("/report", params=bad)
    assert page.status_code == 422 and "<li>serve_months: give the 30-day months" in page.text
    assert main(["report", "--serve", SERVE, "--serve-months", "3", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["serve"]["cost"]["total_usd"] == pytest.approx(per_month * 3)
    assert main(["report", "--serve", SERVE, "--serve-months", "-1"]) == 2
    assert "serve_months:" in capsys.readouterr().err


def test_the_serving_result_link_keeps_the_training_plan_and_comes_back(client: TestClient) -> None:
    report = client.get(f"/report?{QUERY}")
    serve_link = report.context["serve_link"]  # type: ignore[attr-defined]
    assert dict(parse_qsl(urlsplit(serve_link).query))["train"] == TRAIN
    serve = client.get(serve_link)
    assert serve.status_code == 200 and 'type="hidden" name="train"' in serve.text
    assert serve.context["report_link"] == report.context["permalink"]  # type: ignore[attr-defined]
    alone = client.get("/report", params={"serve": SERVE})
    assert "train" not in dict(parse_qsl(urlsplit(alone.context["serve_link"]).query))  # type: ignore[attr-defined]
    assert alone.context["add_training_link"] == "/plan?" + urlencode({"model": MODEL})  # type: ignore[attr-defined]
    assert 'id="add-training"' in alone.text and 'id="add-training"' not in report.text


@pytest.mark.parametrize("fmt", ["html", "pdf"])
def test_a_training_only_report_renders_as_a_page_and_a_pdf(client: TestClient, fmt: str) -> None:
    """The page's links line reads the serving half's 'add the training plan' link whatever the halves: a report
    of the training half alone (no serve=) renders without it, as the page and as its PDF (once a 500)."""
    path = "/api/v1/report?" if fmt == "pdf" else "/report?"
    response = client.get(path + urlencode([("train", TRAIN), ("format", fmt)]))
    assert response.status_code == 200, response.text[:300]
    if fmt == "pdf":
        pages, text = _pdf_text(response.content)
        assert pages >= 1 and "Llama-3.1-8B" in text
    else:
        assert 'id="train-link"' in response.text and 'id="add-training"' not in response.text
