"""POST /api/v1/estimate/from-config: a user's own config files (JSON or multipart) give the estimate of that run."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.plan import TrainingPlan
from tests.webapp import assert_problem

EXAMPLES = Path(__file__).resolve().parents[1] / "recipes" / "examples"
MODEL = "meta-llama/Meta-Llama-3-8B"
QLORA = (EXAMPLES / "axolotl-llama3-qlora.yml").read_text()


def test_a_json_body_gives_the_estimate_of_the_equivalent_plan_and_the_import_report(client: TestClient) -> None:
    imported = client.post(
        "/api/v1/estimate/from-config", json={"model": MODEL, "files": [{"name": "q.yml", "text": QLORA}]}
    )
    assert imported.status_code == 200
    body = imported.json()
    plan = TrainingPlan.model_validate(body["plan"])
    same = client.post("/api/v1/estimate", json={"model": MODEL, **plan.model_dump(mode="json")})
    assert same.json()["peak_allocated_bytes"] == body["peak_allocated_bytes"]
    assert (plan.rank, plan.seq_len, plan.batch_size, plan.attn) == (32, 4096, 2, "flash_attention_2")
    recipe = body["recipe"]
    assert recipe["formats"] == [{"file": "q.yml", "format": "axolotl", "detected": True}]
    assert "bf16" in {n["field"] for n in recipe["not_modelled"]}  # bf16: auto, bf16 only where the GPU has it
    assert plan.packing and any(m["field"] == "sample_packing" for m in recipe["mapped"])
    assert plan.grad_accum_steps == 4 and plan.reentrant  # honoured: axolotl's accumulation and reentrant default
    assert any(m["field"] == "lora_r" and m["plan_field"] == "rank" for m in recipe["mapped"])


def test_a_multipart_upload_is_the_same_as_the_json_body(client: TestClient) -> None:
    files = [("files", ("q.yml", QLORA.encode()))]
    upload = client.post("/api/v1/estimate/from-config", files=files, data={"model": MODEL})
    body = client.post(
        "/api/v1/estimate/from-config", json={"model": MODEL, "files": [{"name": "q.yml", "text": QLORA}]}
    )
    assert upload.status_code == 200
    assert upload.json()["peak_allocated_bytes"] == body.json()["peak_allocated_bytes"]


def test_plan_fields_override_the_files(client: TestClient) -> None:
    body = {"model": MODEL, "files": [{"name": "q.yml", "text": QLORA}], "plan": {"seq_len": 1024}}
    out = client.post("/api/v1/estimate/from-config", json=body).json()
    assert out["plan"]["seq_len"] == 1024 and out["plan"]["rank"] == 32


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"files": [{"name": "x.yml", "text": "- a\n- b\n"}]}, "x.yml"),
        ({"files": []}, "files"),
        ({"model": MODEL, "files": [{"name": "q.yml", "text": QLORA}], "plan": {"rank": 0}}, "rank"),
        ({"model": MODEL, "files": [{"name": "q.yml", "text": QLORA}], "plan": {"targets": ["q_proj", 5]}}, "targets"),
        ({"model": MODEL, "files": [{"name": "q.yml", "text": "lora_r: sixteen\nadapter: lora\n"}]}, "lora_r"),
    ],
)
def test_bad_input_is_a_422_problem_naming_what_to_fix(client: TestClient, body: dict, field: str) -> None:
    problem = assert_problem(client.post("/api/v1/estimate/from-config", json=body), 422)
    assert field in problem["detail"] or any(field in e["field"] for e in problem["errors"])


def test_files_that_name_no_model_need_the_model_field(client: TestClient) -> None:
    bnb = (EXAMPLES / "bnb-nf4.json").read_text()  # a BitsAndBytesConfig names no base model
    problem = assert_problem(
        client.post("/api/v1/estimate/from-config", json={"files": [{"name": "b.json", "text": bnb}]}), 422
    )
    assert problem["errors"] == [{"field": "model", "message": problem["detail"].removeprefix("model: ")}]
    named = {"model": MODEL, "files": [{"name": "b.json", "text": bnb}]}
    assert client.post("/api/v1/estimate/from-config", json=named).json()["plan"]["method"] == "qlora"


def test_binary_uploads_are_422_and_bodies_400_not_500(client: TestClient) -> None:
    assert_problem(client.post("/api/v1/estimate/from-config", files=[("files", ("x.bin", b"\xff\xfe\x00"))]), 422)
    assert_problem(
        client.post("/api/v1/estimate/from-config", content=b"\xff", headers={"content-type": "application/json"}),
        400,
        "invalid-json",
    )


def test_a_secret_in_the_file_is_never_echoed(client: TestClient) -> None:
    secret = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"
    text = QLORA + f"\nhub_token: {secret}\nwandb_api_key: 0123456789abcdef0123456789abcdef01234567\n"
    response = client.post(
        "/api/v1/estimate/from-config", json={"model": MODEL, "files": [{"name": "q.yml", "text": text}]}
    )
    assert response.status_code == 200
    assert secret not in response.text and "0123456789abcdef0123456789abcdef01234567" not in response.text
