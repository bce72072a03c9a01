"""The Store on SQLite: round trip, filters, ordering, accuracy, comparable runs, transactions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from app.errors import InputError
from app.store import AccuracyStats, AccuracySummary, ComparableStats, Store
from app.store.models import SourceSummary
from app.store.schema import measurements

from .conftest import MakeRecord


def count_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(measurements)).scalar_one())


def test_round_trip_keeps_every_field(store: Store, make_record: MakeRecord) -> None:
    rec = make_record(device="cuda", split="holdout", source="gpu-h200", id=999)
    new_id = store.add_measurement(rec)
    (stored,) = store.list_measurements()
    assert stored == rec.model_copy(update={"id": new_id})
    assert store.get_measurement(new_id) == stored
    assert store.get_measurement(new_id + 1) is None
    assert stored.created_at.tzinfo is not None


def test_open_creates_the_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.sqlite3"
    with Store.open(f"sqlite:///{path.as_posix()}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 10_000
    assert path.is_file()


def test_in_memory_store_is_shared_between_threads(make_record: MakeRecord) -> None:
    with Store.open("sqlite://") as store:
        worker = threading.Thread(target=store.add_measurement, args=(make_record(),))
        worker.start()
        worker.join()
        assert len(store.list_measurements()) == 1


def test_list_filters_and_orders_newest_first(store: Store, make_record: MakeRecord) -> None:
    ids = store.add_many(
        [
            make_record(minutes=0, model_id="a", device="cpu", source="cpu-matrix"),
            make_record(minutes=2, model_id="b", device="cuda", source="gpu-h200"),
            make_record(minutes=1, model_id="a", device="cuda", source="gpu-h200"),
            make_record(minutes=2, model_id="a", device="cpu", source="upload"),  # same time as ids[1]
        ]
    )
    assert ids == sorted(ids) and len(set(ids)) == 4

    def listed(**filters: Any) -> list[int | None]:
        return [rec.id for rec in store.list_measurements(**filters)]

    # newest first; equal timestamps: the later insert first
    assert listed() == [ids[3], ids[1], ids[2], ids[0]]
    assert listed(model="a") == [ids[3], ids[2], ids[0]]
    assert listed(device="cuda") == [ids[1], ids[2]]
    assert listed(source="gpu-h200") == [ids[1], ids[2]]
    assert listed(model="a", device="cpu", source="upload") == [ids[3]]
    assert listed(model="nobody") == []
    assert listed(limit=2) == [ids[3], ids[1]]


@pytest.mark.parametrize("filters", [{"device": "tpu"}, {"limit": 0}, {"limit": 10_001}])
def test_bad_filters_are_input_errors(store: Store, filters: dict[str, Any]) -> None:
    with pytest.raises(InputError) as info:
        store.list_measurements(**filters)
    assert info.value.errors[0]["loc"] == [next(iter(filters))]


def test_bad_device_is_refused_everywhere(store: Store) -> None:
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        store.accuracy(device="tpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        store.comparable("llama", "qlora", "tpu")


def test_accuracy_on_hand_made_numbers(store: Store, make_record: MakeRecord) -> None:
    # measured 1000 bytes each, so error % = (estimated - 1000) / 10
    cpu = [+10.0, -20.0, +30.0, -40.0, +50.0]
    cuda = [+5.0, +15.0, -25.0]
    store.add_many(
        [make_record(device="cpu", measured=1000, estimated=1000 + int(e * 10), split="tune") for e in cpu]
        + [make_record(device="cuda", measured=1000, estimated=1000 + int(e * 10), split="holdout") for e in cuda]
        + [make_record(device="cuda", measured=1000, estimated=1000)]
    )
    summary = store.accuracy()
    assert summary.by_source == [
        SourceSummary(source="cpu-matrix", runs=9, verified_runs=9, accuracy=summary.overall)  # type: ignore[arg-type]
    ]
    summary = summary.model_copy(update={"by_source": []})
    # all |errors| sorted: 0 5 10 15 20 25 30 40 50 → median 20; p90 at rank 7.2 → 40 + 0.2·10 = 42
    # signed sorted: -40 -25 -20 0 5 10 15 30 50 → median 5
    assert summary == AccuracySummary(
        overall=AccuracyStats(
            count=9, median_abs_error_pct=20.0, p90_abs_error_pct=42.0, max_abs_error_pct=50.0, median_error_pct=5.0
        ),
        by_device={
            # |cpu| 10 20 30 40 50: p90 at rank 3.6 → 40 + 0.6·10 = 46; signed -40 -20 10 30 50 → 10
            "cpu": AccuracyStats(
                count=5,
                median_abs_error_pct=30.0,
                p90_abs_error_pct=46.0,
                max_abs_error_pct=50.0,
                median_error_pct=10.0,
            ),
            # |cuda| 0 5 15 25: median 10, p90 at rank 2.7 → 15 + 0.7·10 = 22; signed -25 0 5 15 → 2.5
            "cuda": AccuracyStats(
                count=4, median_abs_error_pct=10.0, p90_abs_error_pct=22.0, max_abs_error_pct=25.0, median_error_pct=2.5
            ),
        },
        by_split={
            "tune": AccuracyStats(
                count=5,
                median_abs_error_pct=30.0,
                p90_abs_error_pct=46.0,
                max_abs_error_pct=50.0,
                median_error_pct=10.0,
            ),
            # |holdout| 5 15 25: p90 at rank 1.8 → 15 + 0.8·10 = 23; signed -25 5 15 → 5
            "holdout": AccuracyStats(
                count=3, median_abs_error_pct=15.0, p90_abs_error_pct=23.0, max_abs_error_pct=25.0, median_error_pct=5.0
            ),
            "unsplit": AccuracyStats(
                count=1, median_abs_error_pct=0.0, p90_abs_error_pct=0.0, max_abs_error_pct=0.0, median_error_pct=0.0
            ),
        },
    )
    only_cuda = store.accuracy(device="cuda")
    assert only_cuda.overall == summary.by_device["cuda"]
    assert set(only_cuda.by_device) == {"cuda"}


def test_accuracy_of_an_empty_store(store: Store) -> None:
    assert store.accuracy() == AccuracySummary(overall=None, by_device={}, by_split={})


def test_comparable_prefers_the_same_model_type(store: Store, make_record: MakeRecord) -> None:
    store.add_many(
        [
            make_record(model_type="llama", method="qlora", device="cuda", measured=1000, estimated=1100),
            make_record(model_type="llama", method="qlora", device="cuda", measured=1000, estimated=1300),
            make_record(model_type="qwen2", method="qlora", device="cuda", measured=1000, estimated=500),
            make_record(model_type="llama", method="lora", device="cuda", measured=1000, estimated=2000),
            make_record(model_type="llama", method="qlora", device="cpu", measured=1000, estimated=3000),
        ]
    )
    assert store.comparable("llama", "qlora", "cuda") == ComparableStats(
        count=2,
        median_abs_error_pct=20.0,
        p90_abs_error_pct=28.0,
        max_abs_error_pct=30.0,
        median_error_pct=20.0,
        scope="model_type",
        model_type="llama",
        method="qlora",
        device="cuda",
        residuals=(0.1, 0.3),
        widened="same method and device, 1 GPU, no sharding, model type",
    )


def test_comparable_falls_back_to_method_and_device(store: Store, make_record: MakeRecord) -> None:
    store.add_many(
        [
            make_record(model_type="llama", method="qlora", device="cuda", measured=1000, estimated=1100),
            make_record(model_type="qwen2", method="qlora", device="cuda", measured=1000, estimated=700),
            make_record(model_type="mistral", method="full", device="cuda", measured=1000, estimated=5000),
        ]
    )
    assert store.comparable("gemma3", "qlora", "cuda") == ComparableStats(
        count=2,
        median_abs_error_pct=20.0,
        p90_abs_error_pct=28.0,
        max_abs_error_pct=30.0,
        median_error_pct=-10.0,
        scope="method",
        model_type=None,
        method="qlora",
        device="cuda",
        residuals=(-0.3, 0.1),
        widened="same method and device, 1 GPU, no sharding; widened: any model type",
    )
    assert store.comparable("gemma3", "lora", "cuda") is None
    assert store.comparable("llama", "qlora", "cpu") is None


class Killed(BaseException):
    """Stands in for a run killed between two statements of a transaction."""


def fail_on_insert(store: Store, after: int) -> None:
    """Raise Killed once `after` INSERTs into measurements have executed."""
    seen = 0

    @event.listens_for(store.engine, "after_cursor_execute")
    def _count(*args: Any) -> None:
        nonlocal seen
        if args[2].lstrip().upper().startswith("INSERT INTO MEASUREMENTS"):
            seen += 1
            if seen >= after:
                raise Killed


def test_add_many_is_all_or_nothing(store: Store, make_record: MakeRecord) -> None:
    store.add_measurement(make_record(model_id="kept"))
    fail_on_insert(store, after=3)
    with pytest.raises(Killed):
        store.add_many([make_record(minutes=i, model_id="lost") for i in range(5)])
    assert [rec.model_id for rec in store.list_measurements()] == ["kept"]
    assert count_rows(store) == 1


def test_add_measurement_rolls_back_when_interrupted(store: Store, make_record: MakeRecord) -> None:
    fail_on_insert(store, after=1)  # the INSERT ran, the COMMIT did not
    with pytest.raises(Killed):
        store.add_measurement(make_record())
    assert count_rows(store) == 0


def test_a_killed_process_leaves_no_half_record(db_url: str, make_record: MakeRecord) -> None:
    """A real process dies (os._exit) after its INSERT and before its COMMIT: nothing is stored."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from sqlalchemy import event
        from app.store import MeasurementRecord, Store
        store = Store.open({db_url!r})
        @event.listens_for(store.engine, "after_cursor_execute")
        def die(*args):
            if args[2].lstrip().upper().startswith("INSERT INTO MEASUREMENTS"):
                os._exit(17)
        store.add_measurement(MeasurementRecord.model_validate_json(sys.stdin.read()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=make_record().model_dump_json(exclude={"error_pct"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 17, done.stderr
    with Store.open(db_url) as store:
        assert store.list_measurements() == []
        assert store.add_measurement(make_record()) >= 1


def test_concurrent_writers_from_two_stores(db_url: str, make_record: MakeRecord) -> None:
    """Two workers' stores write at once to one SQLite file: every write lands, none is refused."""
    with Store.open(db_url) as first, Store.open(db_url) as second:
        failures: list[BaseException] = []

        def write(store: Store, base: int) -> None:
            try:
                for i in range(25):
                    store.add_many([make_record(minutes=base + i, model_id=f"w{base}")] * 2)
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(s, n * 100)) for n, s in enumerate([first, second] * 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert count_rows(first) == 4 * 25 * 2


def _planned(**plan: Any) -> dict[str, Any]:
    return {"method": "full", "rank": 16, "seq_len": 512, **plan}


def test_comparable_never_widens_past_the_gpu_count_and_sharding(store: Store, make_record: MakeRecord) -> None:
    store.add_many(
        [
            make_record(method="full", measured=1000, estimated=1000, plan=_planned()),  # one device, no sharding
            make_record(method="full", measured=1000, estimated=900, plan=_planned(gpus=8, sharding="zero3")),
        ]
    )
    sharded = store.comparable("llama", "full", "cpu", gpus=8, sharding="zero3")
    assert sharded is not None and sharded.count == 1 and sharded.residuals == (-0.1,)
    assert (sharded.gpus, sharded.sharding) == (8, "zero3")
    assert sharded.widened == "same method and device, 8 GPUs, zero3, model type"
    # an 8-GPU ZeRO-3 plan is not comparable to single-device runs, nor a 4-GPU one to 8-GPU runs
    assert store.comparable("llama", "full", "cpu", gpus=4, sharding="zero3") is None
    assert store.comparable("llama", "full", "cpu", gpus=8, sharding="fsdp") is None


def test_comparable_widens_model_type_then_checkpointing_and_says_so(store: Store, make_record: MakeRecord) -> None:
    store.add_many(
        [
            make_record(model_type="qwen2", measured=1000, estimated=1200, plan=_planned()),  # every-layer (default)
            make_record(model_type="llama", measured=1000, estimated=800, plan=_planned(gradient_checkpointing=False)),
        ]
    )
    closest = store.comparable("llama", "full", "cpu", checkpointing="none")
    assert closest is not None and closest.residuals == (-0.2,) and closest.checkpointing == "none"
    assert closest.widened == "same method and device, 1 GPU, no sharding, model type, checkpointing"
    other_type = store.comparable("llama", "full", "cpu", checkpointing="every-layer")
    assert other_type is not None and other_type.model_type is None and other_type.residuals == (0.2,)
    assert other_type.widened == "same method and device, 1 GPU, no sharding, checkpointing; widened: any model type"
    neither = store.comparable("gemma", "full", "cpu", checkpointing="sqrt-n")
    assert neither is not None and neither.count == 2 and neither.checkpointing is None
    assert neither.widened.endswith("; widened: any model type and any checkpointing")


def test_comparable_answers_are_kept_until_a_write_or_the_ttl(
    store: Store, make_record: MakeRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every estimate request asks comparable(); the answer is memoised, forgotten on any write through the store,
    and re-read after COMPARABLE_TTL_S (another process may have written)."""
    import app.store.db as db

    store.add_many([make_record(model_type="llama", method="qlora", device="cuda", measured=1000, estimated=1100)])
    queries: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: queries.append(a[2]) if "SELECT" in a[2] else None)
    first = store.comparable("llama", "qlora", "cuda")
    assert first is not None and first.count == 1 and len(queries) == 1
    assert store.comparable("llama", "qlora", "cuda") == first and len(queries) == 1  # from the memo
    store.add_many([make_record(model_type="llama", method="qlora", device="cuda", measured=1000, estimated=1300)])
    after_write = store.comparable("llama", "qlora", "cuda")
    assert after_write is not None and after_write.count == 2
    queries.clear()
    assert store.comparable("llama", "qlora", "cuda", cached_only=True) == after_write and not queries
    with pytest.raises(db.NotCached):  # never asked: the event loop must not query for it
        store.comparable("qwen2", "qlora", "cuda", cached_only=True)
    monkeypatch.setattr(db, "COMPARABLE_TTL_S", 0.0)  # as if the TTL had passed
    with pytest.raises(db.NotCached):
        store.comparable("llama", "qlora", "cuda", cached_only=True)
    assert store.comparable("llama", "qlora", "cuda") == after_write and len(queries) == 1


def test_comparable_never_mixes_software_stacks(store: Store, make_record: MakeRecord) -> None:
    """A transformers-4 run (experts quantized) says nothing about a transformers-5 plan, nor the other way round."""
    store.add_many(
        [
            make_record(method="qlora", measured=1000, estimated=1000, plan=_planned(method="qlora")),
            make_record(
                method="qlora", measured=1000, estimated=950, plan=_planned(method="qlora", stack="transformers-4")
            ),
        ]
    )
    four = store.comparable("llama", "qlora", "cpu", stack="transformers-4")
    assert four is not None and four.count == 1 and four.residuals == (-0.05,)
    assert four.widened is not None and "transformers-4" in four.widened
    five = store.comparable("llama", "qlora", "cpu")
    assert five is not None and five.count == 1 and five.residuals == (0.0,)
