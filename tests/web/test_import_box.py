"""The planner's config import box: a pasted or uploaded config fills the form and shows the import report."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parents[1] / "recipes" / "examples"
QLORA = (EXAMPLES / "axolotl-llama3-qlora.yml").read_text()


def test_the_index_offers_the_import_box(client: TestClient) -> None:
    page = client.get("/").text
    assert 'action="/import"' in page and 'enctype="multipart/form-data"' in page


def test_a_pasted_axolotl_config_fills_the_form_and_lists_what_is_not_modelled(client: TestClient) -> None:
    response = client.post("/import", data={"config_text": QLORA})
    assert response.status_code == 200
    form = response.context["form"]["values"]  # type: ignore[attr-defined]
    assert (form["rank"], form["seq_len"], form["batch_size"], form["attn"]) == ("32", "4096", "2", "flash_attention_2")
    assert form["model"] == "NousResearch/Meta-Llama-3-8B"
    page = response.text
    assert 'id="not-modelled"' in page and "bf16: auto is bf16 on GPUs that have it" in page
    assert form["grad_accum_steps"] == "4"  # gradient_accumulation_steps is honoured
    assert '<table id="mapped">' in page and "lora_r" in page


def test_uploaded_files_combine_and_the_typed_model_wins(client: TestClient) -> None:
    files = [
        ("config_file", ("adapter_config.json", (EXAMPLES / "peft-llama-3.2-3B-rank32-dora.json").read_bytes())),
        ("config_file", ("bnb.json", (EXAMPLES / "bnb-nf4.json").read_bytes())),
    ]
    response = client.post("/import", files=files, data={"model": "meta-llama/Llama-3.2-3B"})
    assert response.status_code == 200
    form = response.context["form"]["values"]  # type: ignore[attr-defined]
    assert (form["method"], form["rank"], form["dora"], form["model"]) == (
        "qlora",
        "32",
        "true",
        "meta-llama/Llama-3.2-3B",
    )


def test_nothing_or_garbage_is_an_html_error_that_says_what_to_give(client: TestClient) -> None:
    empty = client.post("/import", data={"config_text": "  "})
    assert empty.status_code == 422 and "paste a training config" in empty.text
    assert "<html" in empty.text.lower()
    garbage = client.post("/import", files=[("config_file", ("x.bin", b"\xff\xfe\x00\x01"))])
    assert garbage.status_code == 422 and "Traceback" not in garbage.text


def test_a_secret_in_a_pasted_config_is_never_echoed(client: TestClient) -> None:
    secret = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"
    response = client.post("/import", data={"config_text": QLORA + f"\nhub_token: {secret}\n"})
    assert response.status_code == 200 and secret not in response.text
