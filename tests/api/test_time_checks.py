"""The time model against stored measured step times at every edge: JSON, Markdown, the result page and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.catalog import load_spec
from app.cli import main
from app.core.plan import TrainingPlan
from app.core.throughput import RunSize, step_time
from app.core.tiers import find_tier
from app.settings import get_settings
from app.store import Store
from app.store.models import MeasurementRecord, StepTiming
from tests.webapp import FakeStore, build_app, make_record

LLAMA = "meta-llama/Llama-2-7b-hf"  # hidden size 4096; the default plan: qlora, seq 2048, checkpointing
PEAK = 989.4e12


def timed(measured: float, model: float, mfu: float, **fields: Any) -> MeasurementRecord:
    """A verified H200 run of the default plan's shape with explicit measured and modelled step times."""
    timing = StepTiming(
        step_s=measured,
        step_times_s=[measured * 2, measured],
        tokens_per_step=2048,
        gpu="H200",
        estimated_step_s=model,
        flops_per_step=mfu * PEAK * measured,
        peak_flops=PEAK,
    )
    values: dict[str, Any] = {
        "plan": {"method": "qlora", "seq_len": 2048, "gradient_checkpointing": True},
        "config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 4},
        "verified": True,
        "timing": timing,
        **fields,
    }
    return make_record(**values)


RUNS = [timed(1.0, 0.8, 0.30), timed(2.0, 1.0, 0.20), timed(1.0, 1.1, 0.35)]  # errors -20 %, -50 %, +10 %


def test_the_json_quotes_the_time_model_against_measured_runs(tmp_path: Path) -> None:
    odd = [
        timed(1.0, 5.0, 0.1, verified=False),  # unverified: never quoted
        timed(1.0, 5.0, 0.1, plan={"method": "full"}),  # another method
        timed(1.0, 5.0, 0.1, plan={"method": "qlora", "seq_len": 0}),  # a plan it cannot describe
        timed(1.0, 5.0, 0.1, config={"hidden_size": "wide"}),
    ]
    store = FakeStore([*RUNS, *odd])
    with TestClient(build_app(tmp_path, store=store)) as client:
        body = client.get("/api/v1/estimate", params={"model": LLAMA}).json()
        md = client.get("/api/v1/estimate", params={"model": LLAMA, "format": "md"}).text
        page = client.get("/plan", params={"model": LLAMA}).text
    tiers = {t["gpu"]: t["time_check"] for t in body["recommendations"]["tiers"]}
    h200 = tiers["H200"]
    assert (h200["runs"], h200["median_error"], h200["min_error"], h200["max_error"]) == (
        3,
        pytest.approx(-0.2),
        pytest.approx(-0.5),
        pytest.approx(0.1),
    )
    assert h200["median_mfu"] == pytest.approx(0.30) and h200["model_mfu"] == 0.4
    text = "time model vs 3 measured runs on H200: median \u221220 %, \u221250 % to +10 %"
    assert h200["text"].startswith(text)
    assert h200["scope"].startswith("H200, same method, checkpointing")
    # with 3 runs the check also re-times the H200 option at their median measured MFU, without applying it
    spec, h200_tier = load_spec(LLAMA), find_tier("H200")
    assert spec is not None and h200_tier is not None
    at_30 = step_time(spec, TrainingPlan(), h200_tier, 1, RunSize(), mfu=0.30)
    at_40 = step_time(spec, TrainingPlan(), h200_tier, 1, RunSize())
    assert at_30 is not None and at_40 is not None
    option = next(t["option"] for t in body["recommendations"]["tiers"] if t["gpu"] == "H200")
    assert h200["hours_at_measured_mfu"] == pytest.approx(at_30.hours)
    assert option["hours"] == pytest.approx(at_40.hours)  # the model's hours are the ones costed
    assert at_40.hours < at_30.hours
    assert f"at the measured MFU this run would take {at_30.hours:,.1f} h (not applied)" in h200["text"]
    assert tiers["L40S"]["runs"] == 0
    assert tiers["L40S"]["text"] == "no measured step times yet for L40S: the time is the model at 40% MFU"
    assert f"- Time check: {text}" in md
    assert "Time model vs 3 measured runs on H200: median \u221220 %" in page


def test_without_measured_runs_every_edge_says_so(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, store=FakeStore([]))) as client:
        body = client.get("/api/v1/estimate", params={"model": LLAMA}).json()
        md = client.get("/api/v1/estimate", params={"model": LLAMA, "format": "md"}).text
        page = client.get("/plan", params={"model": LLAMA}).text
    best = body["recommendations"]["recommended"]
    words = f"no measured step times yet for {best}: the time is the model at 40% MFU"
    assert {t["time_check"]["runs"] for t in body["recommendations"]["tiers"]} == {0}
    assert f"- Time check: {words}" in md
    assert words[0].upper() + words[1:] in page


def test_the_cli_quotes_the_stores_measured_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("GPUPLAN_DATA_DIR", str(data))
    get_settings.cache_clear()
    try:
        assert main(["estimate", LLAMA]) == 0
        assert "time check: no measured step times yet for " in capsys.readouterr().out
        assert not (data / "gpuplan.sqlite3").exists()  # the estimate creates no store
        with Store.open(f"sqlite:///{data / 'gpuplan.sqlite3'}") as store:
            store.add_many(
                [r.model_copy(update={"created_at": datetime(2025, 1, n + 1, tzinfo=UTC)}) for n, r in enumerate(RUNS)]
            )
        assert main(["estimate", LLAMA]) == 0
        out = capsys.readouterr().out
        assert main(["estimate", LLAMA, "--json"]) == 0
        body = json.loads(capsys.readouterr().out)
    finally:
        get_settings.cache_clear()
    assert "time check: time model vs 3 measured runs on H200: median \u221220 %" in out
    (h200,) = [t for t in body["recommendations"]["tiers"] if t["gpu"] == "H200"]
    assert h200["time_check"]["runs"] == 3
