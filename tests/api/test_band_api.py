"""The band and the verdict at the edges: /api/v1/estimate's typed fields, the safe answer, and the result page."""

from __future__ import annotations

import math
import re
from pathlib import Path

from fastapi.testclient import TestClient

from app.http.schemas import EstimateResponse
from tests.webapp import FakeStore, build_app, make_record

LLAMA = "meta-llama/Llama-2-7b-hf"
MEASURED = 1_000_000_000
RESIDUALS = (0.25, -0.5, 0.0, 0.125)  # exact in binary: estimated = measured × (1 + r)


def cuda_runs() -> FakeStore:
    return FakeStore(
        [make_record(estimated_peak_bytes=int(MEASURED * (1 + r)), verified=True) for r in RESIDUALS]
        + [make_record(estimated_peak_bytes=3 * MEASURED)]  # unverified: never in the band
    )


def test_the_json_carries_the_band_of_comparable_runs(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, store=cuda_runs())) as client:
        body = client.get("/api/v1/estimate", params={"model": LLAMA}).json()
    EstimateResponse.model_validate(body)
    device = body["device_bytes"]
    band = body["uncertainty"]["band"]
    assert body["uncertainty"]["reason"] is None
    # observed range of 4 runs, -0.5 .. 0.25: [estimate / 1.25, estimate / 0.5], covering (4 - 1) / (4 + 1)
    assert (band["low_bytes"], band["high_bytes"]) == (math.floor(device / 1.25), math.ceil(device / 0.5))
    assert (band["runs"], band["method"], band["coverage"], band["source"]) == (4, "observed range", 0.6, "cuda")
    assert body["safe_answer"] is False and body["recommendations"]["safety_factor"] == 1.0
    assert body["verdict"]["state"] == "fits"


def test_the_safe_answer_judges_on_the_upper_end(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, store=cuda_runs())) as client:
        plain = client.get("/api/v1/estimate", params={"model": LLAMA}).json()
        safe = client.get("/api/v1/estimate", params={"model": LLAMA, "safe": "true"}).json()
        posted = client.post("/api/v1/estimate?safe=true", json={"model": LLAMA}).json()
        md = client.get("/api/v1/estimate", params={"model": LLAMA, "safe": "true", "format": "md"}).text
        bad = client.get("/api/v1/estimate", params={"model": LLAMA, "safe": "maybe"})
    assert safe["safe_answer"] is True and posted["safe_answer"] is True
    factor = safe["recommendations"]["safety_factor"]
    assert factor == safe["uncertainty"]["band"]["high_bytes"] / safe["device_bytes"]
    by_gpu = {t["gpu"]: t for t in safe["recommendations"]["tiers"]}
    for tier in plain["recommendations"]["tiers"]:
        assert by_gpu[tier["gpu"]]["judged_bytes"] == math.ceil(tier["judged_bytes"] * factor)
    # about twice the bytes: the 12 GiB cards that held the plan no longer do
    assert sum(t["fits"] for t in safe["recommendations"]["tiers"]) < sum(
        t["fits"] for t in plain["recommendations"]["tiers"]
    )
    assert "judged on the band's upper end" in md and "- Uncertainty: likely" in md
    assert bad.status_code == 422


def test_the_setting_makes_the_safe_answer_the_default(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, store=cuda_runs(), safe_answer=True)) as client:
        body = client.get("/api/v1/estimate", params={"model": LLAMA}).json()
        off = client.get("/api/v1/estimate", params={"model": LLAMA, "safe": "false"}).json()
        page = client.get("/plan", params={"model": LLAMA})
    assert body["safe_answer"] is True and off["safe_answer"] is False
    assert "Judged on the band&#39;s upper end" in page.text or "Judged on the band's upper end" in page.text


def test_a_sharded_multi_gpu_plan_is_not_compared_with_single_device_runs(tmp_path: Path) -> None:
    store = FakeStore([make_record(plan={"method": "full"}, device="cpu", verified=True) for _ in range(13)])
    params = {"model": LLAMA, "method": "full", "gpus": "8", "sharding": "zero3"}
    with TestClient(build_app(tmp_path, store=store)) as client:
        body = client.get("/api/v1/estimate", params=params).json()
        page = client.get("/plan", params=params)
    assert body["uncertainty"] == {"band": None, "reason": "no verified measured full run on 8 GPUs under zero3 yet"}
    text = re.sub(r"\s+", " ", page.text)
    assert "No uncertainty band: no verified measured full run on 8 GPUs under zero3 yet." in text
    assert "No CUDA measurements of this kind yet." in text
    assert "No comparable measured runs yet: none of this method on 8 GPUs under zero3." in text
    assert "gpuplan was within" not in text


def test_no_tier_count_within_the_limits_is_said_in_json_and_on_the_page(tmp_path: Path) -> None:
    params = {"model": LLAMA, "seq_len": "1048576", "batch_size": "4096"}
    with TestClient(build_app(tmp_path)) as client:
        body = client.get("/api/v1/estimate", params=params).json()
        page = client.get("/plan", params=params)
    assert body["recommendations"]["recommended"] is None
    assert body["verdict"]["state"] == "does_not_fit" and body["verdict"]["max_gpus"] == 32
    assert "no GPU count of any tier up to 32 holds it under sharding none" in body["verdict"]["text"]
    assert page.status_code == 200 and 'data-state="does_not_fit"' in page.text
    assert "no GPU count of any tier up to 32 holds it" in page.text


def test_the_tiers_table_says_what_its_verdict_used(tmp_path: Path) -> None:
    params = {"model": "mistralai/Mixtral-8x7B-v0.1", "method": "lora", "seq_len": "110000"}
    with TestClient(build_app(tmp_path)) as client:
        page = client.get("/plan", params=params)
    rows = re.findall(
        r'<tr class="[^"]*" data-gpu="([^"]+)" data-state="(\w+)">.*?<td class="tier-state">([^<]+)</td>\s*'
        r'<td class="num tier-left">([^<]+)</td>',
        page.text,
        re.S,
    )
    assert len(rows) == len(page.context["rec"].tiers)  # type: ignore[attr-defined]
    words = {"fits": "fits", "tight": "tight", "does_not_fit": "does not fit"}
    for gpu, state, said, left in rows:
        assert said == words[state], gpu
        prefix = {
            "fits": r"[\d.,]+ GiB left after the 10% reserve",
            "tight": r"tight: [\d.,]+ GiB into the 10% reserve",
        }
        assert re.fullmatch(prefix.get(state, r"over budget by [\d.,]+ GiB"), left), (gpu, left)
    assert ("MI300X", "tight") in {(g, s) for g, s, _, _ in rows}
    assert page.context["verdict"].state == "tight"  # type: ignore[attr-defined]
