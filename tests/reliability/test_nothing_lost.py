"""Issue 12, "nothing lost, nothing poisoned": incremental calibrate-matrix with resume, idempotent and batched
imports, uploads kept apart from verified runs, and a WAL that is checkpointed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.calibration.commands import accept_calibrations, calibrate_matrix, import_calibrations
from app.calibration.compare import compare_to, spec_for
from app.calibration.matrix import Point, PointResult
from app.calibration.measurement import Environment, Measurement, Phase
from app.settings import Settings
from app.store import MeasurementRecord, Store
from tests.webapp import make_record

from .conftest import AUTH

SPEC = """
points = 6  # 4 distinct points
holdout = 0.5
steps = 2
seed = 1

[defaults]
device = "cpu"
optimizer = "adamw"

[axes]
method = ["lora", "full"]
rank = [4, 8]
seq_len = [16, 32]

[families.llama]
config = { model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 4, vocab_size = 256 }
"""


class Crash(Exception):
    pass


def fake_measurement(point: Point, n: int) -> Measurement:
    peak = 10_000_000 + n
    return Measurement(
        model_type="llama",
        config=point.config,
        plan=point.plan.model_dump(mode="json"),
        layers=2,
        steps=2,
        device="cpu",
        peak_allocated_bytes=peak,
        peak_reserved_bytes=None,
        phases=[Phase(label="load", current_bytes=peak // 2, peak_bytes=peak // 2)],
        env=Environment(
            torch="2",
            transformers="5",
            peft="0.17",
            bitsandbytes=None,
            python="3.11",
            device_name="cpu",
            total_memory_bytes=None,
        ),
        duration_s=0.1,
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n),
    )


class FakeRunner:
    """Stands in for run_points: 'measures' each point at once, and crashes after `crash_after` points."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after = crash_after
        self.measured: list[str] = []

    def __call__(self, points: list[Point], **_: Any) -> Iterator[PointResult]:
        for point in points:
            if self.crash_after is not None and len(self.measured) == self.crash_after:
                raise Crash("the machine went away")
            self.measured.append(point.id)
            measurement = fake_measurement(point, len(self.measured))
            comparison, _ = compare_to(measurement, spec_for(measurement, point.family))
            yield PointResult(point=point, measurement=measurement, comparison=comparison)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", hf_home=tmp_path / "hf", database_url=None)


def run(settings: Settings, spec: Path, report: Path, runner: FakeRunner, **kw: Any) -> list[dict[str, Any]]:
    return calibrate_matrix(
        spec, settings, report=report, family=None, limit=None, store=True, source="cpu-test", runner=runner, **kw
    )


def stored(settings: Settings, **filters: Any) -> list[MeasurementRecord]:
    with Store.from_settings(settings) as db:
        return db.list_measurements(limit=10_000, **filters)


def test_calibrate_matrix_commits_each_point_and_a_rerun_resumes(settings: Settings, tmp_path: Path) -> None:
    spec, report = tmp_path / "m.toml", tmp_path / "report.jsonl"
    spec.write_text(SPEC)
    crashing = FakeRunner(crash_after=2)
    with pytest.raises(Crash):
        run(settings, spec, report, crashing)
    # the two points measured before the crash are in the store and the report
    assert len(stored(settings, source="cpu-test")) == 2
    assert len(report.read_text().splitlines()) == 2
    again = FakeRunner()
    rows = run(settings, spec, report, again)
    assert set(again.measured).isdisjoint(crashing.measured) and len(again.measured) + 2 == 4
    assert len(rows) == len(again.measured)
    assert len(stored(settings, source="cpu-test")) == 4 and len(report.read_text().splitlines()) == 4
    assert all(r.verified for r in stored(settings))  # the operator's own runs
    nothing = FakeRunner()
    assert run(settings, spec, report, nothing) == [] and nothing.measured == []
    fresh = FakeRunner()
    run(settings, spec, report, fresh, resume=False)
    assert len(fresh.measured) == 4


def test_a_point_in_the_report_but_not_the_store_is_stored_not_remeasured(settings: Settings, tmp_path: Path) -> None:
    spec, report = tmp_path / "m.toml", tmp_path / "report.jsonl"
    spec.write_text(SPEC)
    first = FakeRunner()
    calibrate_matrix(spec, settings, report=report, family=None, limit=2, store=False, source="cpu-test", runner=first)
    with report.open("a") as fh:
        fh.write('{"id": "half a line')  # the crash hit while writing
    second = FakeRunner()
    run(settings, spec, report, second)
    assert len(second.measured) == 2 and set(second.measured).isdisjoint(first.measured)
    assert len(stored(settings, source="cpu-test")) == 4


def test_importing_a_matrix_report_twice_adds_nothing_the_second_time(settings: Settings, tmp_path: Path) -> None:
    spec, report = tmp_path / "m.toml", tmp_path / "report.jsonl"
    spec.write_text(SPEC)
    calibrate_matrix(
        spec, settings, report=report, family=None, limit=None, store=False, source="x", runner=FakeRunner()
    )
    assert import_calibrations(report, settings, source="gpu-test") == 4
    assert import_calibrations(report, settings, source="gpu-test") == 0
    assert import_calibrations(report, settings, source="other-label") == 0  # the same runs, relabelled
    assert len(stored(settings)) == 4


def test_a_big_import_runs_in_short_batched_transactions(settings: Settings, tmp_path: Path) -> None:
    from app.store.db import IMPORT_BATCH

    path = tmp_path / "big.jsonl"
    rows = 3 * IMPORT_BATCH + 7
    base = make_record(source="bulk")
    with path.open("w") as fh:
        for n in range(rows):
            rec = base.model_copy(update={"created_at": base.created_at + timedelta(seconds=n)})
            fh.write(rec.model_dump_json() + "\n")
    with Store.from_settings(settings) as db:
        begins: list[str] = []
        event.listen(db.engine, "begin", lambda conn: begins.append("begin"))
        assert db.import_jsonl(path) == rows
        assert len(begins) >= 4  # one write transaction per batch, not one for the whole file
        assert db.import_jsonl(path) == 0
        wal = Path(str(db.engine.url.database) + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and truncated after the import


def test_a_bad_line_adds_nothing(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(make_record().model_dump_json() + "\n" + json.dumps({"model_id": "x"}) + "\n")
    from app.errors import InputError

    with pytest.raises(InputError, match=":2: not a measurement"):
        import_calibrations(path, settings, source=None)
    assert stored(settings) == []


def test_uploads_stay_apart_until_accepted(client: TestClient, sqlite_store: Store, settings: Settings) -> None:
    from app.store.seed import seed_store

    assert seed_store(sqlite_store) > 0
    headline = client.get("/api/v1/accuracy").json()["overall"]
    page = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf", "device": "cpu", "optimizer": "adamw"})
    quoted = page.context["comparable"]  # type: ignore[attr-defined]
    # a fuzzer with the token uploads wild runs: nothing quoted moves
    for n in range(20):
        wild = make_record(source="fuzz", device="cpu", device_name=None, measured_reserved_bytes=None)
        body = wild.model_dump(mode="json", exclude={"error_pct", "id"})
        body.update(measured_peak_bytes=1000 + n, created_at=f"2025-05-{n + 1:02d}T00:00:00Z", plan={"method": "lora"})
        assert client.post("/api/v1/calibrations", json=body, headers=AUTH).status_code == 201
    accuracy = client.get("/api/v1/accuracy").json()
    assert accuracy["overall"] == headline
    assert accuracy["unverified"]["count"] == 20 and accuracy["unverified"]["median_abs_error_pct"] > 1000
    by_source = {s["source"]: s for s in accuracy["by_source"]}
    assert by_source["fuzz"]["runs"] == 20 and by_source["fuzz"]["verified_runs"] == 0
    assert by_source["cpu-matrix"]["verified_runs"] == by_source["cpu-matrix"]["runs"]
    again = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf", "device": "cpu", "optimizer": "adamw"})
    assert again.context["comparable"] == quoted  # type: ignore[attr-defined]
    listed = client.get("/api/v1/calibrations", params={"source": "fuzz", "verified": "false"}).json()
    assert len(listed) == 20 and {r["source"] for r in listed} == {"fuzz"}
    page_text = client.get("/calibrations", params={"source": "fuzz"}).text  # the page is paged: the fuzz rows
    assert "<code>fuzz</code> <em" in page_text and "unverified: not in the quoted accuracy" in page_text
    assert sqlite_store.accept("fuzz") == 20
    assert client.get("/api/v1/accuracy").json()["unverified"] is None


def test_accept_calibrations_command(settings: Settings) -> None:
    with Store.from_settings(settings) as db:
        db.add_many([make_record(source="lab"), make_record(source="lab", model_id="b"), make_record(source="z")])
    assert accept_calibrations(settings, source="lab") == 2
    assert accept_calibrations(settings, source="lab") == 0
    assert {(r.source, r.verified) for r in stored(settings)} == {("lab", True), ("z", False)}


def test_close_checkpoints_the_wal(settings: Settings) -> None:
    db = Store.from_settings(settings)
    db.add_many([make_record(model_id=f"m{n}") for n in range(50)])
    wal = Path(str(db.engine.url.database) + "-wal")
    assert wal.stat().st_size > 0
    db.close()
    assert not wal.exists() or wal.stat().st_size == 0


def test_writes_interleave_with_a_big_import(settings: Settings, tmp_path: Path) -> None:
    import threading
    import time

    path = tmp_path / "big.jsonl"
    base = make_record(source="bulk")
    with path.open("w") as fh:
        for n in range(4000):
            fh.write(base.model_copy(update={"created_at": base.created_at + timedelta(seconds=n)}).model_dump_json())
            fh.write("\n")
    with Store.from_settings(settings) as db:
        worker = threading.Thread(target=db.import_jsonl, args=(path,))
        worker.start()
        waits = []
        while worker.is_alive() and len(waits) < 20:
            start = time.monotonic()
            db.add_measurement(make_record(source="upload", model_id=f"u{len(waits)}"))
            waits.append(time.monotonic() - start)
        worker.join(timeout=120)
        assert max(waits) < 2.0  # one batch's transaction at most, never the whole import
        assert len(db.list_measurements(source="bulk", limit=10_000)) == 4000
