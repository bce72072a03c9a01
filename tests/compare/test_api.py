"""GET/POST /api/v1/compare: the numbers are estimate()'s, one scale for all, errors name the plan; PDFs read back."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import io
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from app.core.units import GIB
from tests.compare.helpers import GPUS, MODEL, PLAN_FIELDS, PLANS, expected, headline_texts, needs_pdf
from tests.webapp import assert_problem

API = "/api/v1/compare"
ROOT = Path(__file__).resolve().parents[2]


def _get(client: TestClient, plans: list[str], **params: str) -> Any:
    return client.get(API, params=[("plan", p) for p in plans] + list(params.items()))


def test_get_compares_the_three_plans_with_the_cores_numbers(client: TestClient) -> None:
    response = _get(client, PLANS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["number"] for p in body["plans"]] == [1, 2, 3]
    for i, plan in enumerate(body["plans"]):
        device, row = expected(i)
        assert plan["device_bytes"] == device == plan["estimate"]["device_bytes"]
        assert plan["choice"]["gpu"] == GPUS[i] and plan["choice"]["pinned"] is True
        assert plan["choice"]["fits"] == row.fits
        assert plan["choice"]["option"]["cost_usd"] == pytest.approx(row.option.cost_usd)  # type: ignore[union-attr]
        assert plan["estimate"]["plan"]["method"] == PLAN_FIELDS[i]["method"]
    assert body["scale_bytes"] >= max(p["device_bytes"] for p in body["plans"])
    assert body["scale_bytes"] >= max(p["choice"]["budget_bytes"] for p in body["plans"])
    costs = [p["choice"]["option"]["cost_usd"] for p in body["plans"]]
    assert body["cheapest"] == costs.index(min(costs)) + 1
    assert body["permalink"].startswith("/compare?plan=")


def test_post_takes_objects_or_strings_and_answers_the_same(client: TestClient) -> None:
    objects = [{"model": MODEL, **fields, "gpu": gpu} for fields, gpu in zip(PLAN_FIELDS, GPUS, strict=True)]
    posted = client.post(API, json={"plans": [objects[0], PLANS[1], objects[2]]})
    assert posted.status_code == 200, posted.text
    assert posted.json() == _get(client, PLANS).json()


def test_without_a_gpu_a_plan_is_judged_on_its_recommended_option(client: TestClient) -> None:
    body = _get(client, [f"model={MODEL}", f"model={MODEL}&method=lora"]).json()
    for plan in body["plans"]:
        rec = plan["estimate"]["recommendations"]
        assert plan["choice"]["pinned"] is False
        assert (plan["choice"]["gpu"], plan["choice"]["gpus"]) == (rec["recommended"], rec["recommended_gpus"])


def test_markdown_and_svg_exports(client: TestClient) -> None:
    md = _get(client, PLANS, format="md")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    for i in range(3):
        assert f"| {i + 1} | `{MODEL}` |" in md.text
    svg = _get(client, PLANS, format="svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.count('class="plan"') == 3 and svg.text.count('class="budget"') == 3
    for i in range(3):
        assert f"{i + 1}. {expected(i)[0] / GIB:.1f} GiB" in svg.text


def test_a_bad_field_in_the_second_plan_names_plan_2_and_the_field(client: TestClient) -> None:
    body = assert_problem(_get(client, [PLANS[0], f"model={MODEL}&rank=0"]), 422, "invalid-plan")
    assert body["detail"] == "2nd plan: rank: Input should be greater than or equal to 1"
    assert body["errors"] == [{"field": "plan2.rank", "message": "Input should be greater than or equal to 1"}]
    posted = client.post(API, json={"plans": [{"model": MODEL}, {"model": MODEL, "seq_len": "long"}]})
    body = assert_problem(posted, 422, "invalid-plan")
    assert body["errors"] == [{"field": "plan2.seq_len", "message": "Input should be a valid integer"}]


def test_an_unknown_model_in_the_second_plan_is_a_404_naming_it(client: TestClient) -> None:
    body = assert_problem(_get(client, [PLANS[0], "model=nobody/nothing"]), 404)
    assert body["detail"].startswith("2nd plan: ")


@pytest.mark.parametrize("count", [1, 7])
def test_one_or_seven_plans_are_refused(client: TestClient, count: int) -> None:
    body = assert_problem(_get(client, [PLANS[0]] * count), 422)
    assert body["errors"] == [
        {"field": "plan", "message": f"give 2 to 6 plans to compare (one `plan` entry each); got {count}"}
    ]
    body = assert_problem(client.post(API, json={"plans": [{"model": MODEL}] * count}), 422)
    assert body["errors"][0]["field"] == "plans"


def test_unknown_query_parameters_and_formats_are_refused(client: TestClient) -> None:
    body = assert_problem(client.get(API, params={"plans": PLANS[0]}), 422)
    assert body["errors"][0]["field"] == "plans"
    assert_problem(_get(client, PLANS, format="docx"), 422)
    assert_problem(client.post(API, json={"plan": PLANS}), 422)


def _pdf_text(content: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(content))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


@needs_pdf
def test_the_comparison_as_a_pdf_holds_every_headline(client: TestClient) -> None:
    response = _get(client, PLANS, format="pdf")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"].startswith('attachment; filename="gpuplan-compare-')
    pages, text = _pdf_text(response.content)
    assert pages == 1
    for i in range(3):
        for fragment in headline_texts(i):
            assert fragment in text, (i, fragment)
    assert "Stack modelled" in text and "transformers" in text


@needs_pdf
def test_the_estimate_as_a_pdf_is_the_printed_result_page(client: TestClient) -> None:
    response = client.get("/api/v1/estimate", params={"model": MODEL, "method": "lora", "format": "pdf"})
    assert response.status_code == 200, response.text
    pages, text = _pdf_text(response.content)
    device, _ = expected(1)
    page = client.get("/plan", params={"model": MODEL, "method": "lora"}).text
    assert 1 <= pages <= 2
    assert f"{device / GIB:,.2f} GiB" in text and "GPU tiers" in text and "Stack modelled" in text
    posted = client.post("/api/v1/estimate?format=pdf", json={"model": MODEL, "method": "lora"})
    assert posted.status_code == 200 and _pdf_text(posted.content)[1] == text  # POST prints the same page
    verdict = re.search(r'<span id="verdict-text"[^>]*>(.*?)</span>', page, re.S)
    assert verdict is not None
    words = re.sub(r"<[^>]+>", "", verdict.group(1)).split()[:6]  # the verdict, as the page words it
    assert " ".join(words) in " ".join(text.split())


class _NoPango(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """weasyprint's import as it fails without Pango: cffi's dlopen raises OSError."""

    def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self) if name == "weasyprint" else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        raise OSError("cannot load library 'libpango-1.0-0': libpango-1.0-0: cannot open shared object file")


def test_without_pango_a_pdf_is_a_501_saying_what_to_install(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "weasyprint", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPango(), *sys.meta_path])
    body = assert_problem(_get(client, PLANS, format="pdf"), 501, "pdf-unavailable")
    assert "apt-get install libpango-1.0-0 libpangoft2-1.0-0" in body["detail"]
    body = assert_problem(client.get("/api/v1/estimate", params={"model": MODEL, "format": "pdf"}), 501)
    assert "cannot load library 'libpango-1.0-0'" in body["detail"]


def test_without_weasyprint_a_pdf_is_a_501(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # import weasyprint raises ImportError
    body = assert_problem(_get(client, PLANS, format="pdf"), 501, "pdf-unavailable")
    assert "pip install weasyprint" in body["detail"]


def test_weasyprint_is_imported_only_for_a_pdf(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from tests.webapp import build_app\n"
        "from pathlib import Path\n"
        f"app = build_app(Path({str(tmp_path)!r}))\n"
        "with TestClient(app) as c:\n"
        f"    assert c.get('/api/v1/compare', params=[('plan', p) for p in {PLANS!r}]).status_code == 200\n"
        "    assert c.get('/compare', params=[('plan', p) for p in " + repr(PLANS) + "]).status_code == 200\n"
        "assert 'weasyprint' not in sys.modules, 'weasyprint imported without a PDF'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
