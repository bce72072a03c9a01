"""Schema migrations: from nothing and from an old version, idempotent, concurrent, never downgrading."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text

from app.errors import StoreError
from app.store import Store
from app.store.engine import create_store_engine
from app.store.migrations import LATEST_VERSION, MIGRATIONS, upgrade
from app.store.schema import measurements, schema_version

from .conftest import MakeRecord


def shape(engine: Engine) -> dict[str, Any]:
    """Columns (name → nullable) and indexes (name → columns) of the measurements table."""
    inspector = inspect(engine)
    return {
        "columns": {col["name"]: col["nullable"] for col in inspector.get_columns("measurements")},
        "indexes": {ix["name"]: list(ix["column_names"]) for ix in inspector.get_indexes("measurements")},
    }


def versions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(schema_version.c.version).order_by(schema_version.c.version)).scalars())


def test_versions_are_contiguous_from_one() -> None:
    assert [step.version for step in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))


def test_a_new_database_gets_exactly_the_current_schema(store: Store) -> None:
    assert versions(store.engine) == list(range(1, LATEST_VERSION + 1))
    assert shape(store.engine) == {
        "columns": {col.name: col.nullable for col in measurements.columns},
        "indexes": {ix.name: [col.name for col in ix.columns] for ix in measurements.indexes},
    }


def test_opening_again_applies_nothing(db_url: str) -> None:
    Store.open(db_url).close()
    with Store.open(db_url) as store:
        assert versions(store.engine) == list(range(1, LATEST_VERSION + 1))


def test_upgrade_from_version_1_keeps_and_backfills_rows(db_url: str, make_record: MakeRecord) -> None:
    """A database left at version 1 with a row in it, as an old gpuplan wrote it, opens and upgrades."""
    rec = make_record(device="cuda", method="lora", split="tune")
    old = create_store_engine(db_url)
    try:
        assert upgrade(old, target=1) == 1
        with old.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO measurements (created_at, model_id, model_type, device, device_name, layers,"
                    " plan_json, config_json, measured_peak_bytes, measured_reserved_bytes, estimated_peak_bytes,"
                    " phases_json, env_json, source, split) VALUES (:created_at, :model_id, :model_type, :device,"
                    " :device_name, :layers, :plan, :config, :measured, :reserved, :estimated, :phases, :env,"
                    " :source, :split)"
                ),
                {
                    "created_at": datetime(2025, 3, 1, 12, 0),
                    "model_id": rec.model_id,
                    "model_type": rec.model_type,
                    "device": rec.device,
                    "device_name": rec.device_name,
                    "layers": rec.layers,
                    "plan": json.dumps(rec.plan),
                    "config": json.dumps(rec.config),
                    "measured": rec.measured_peak_bytes,
                    "reserved": rec.measured_reserved_bytes,
                    "estimated": rec.estimated_peak_bytes,
                    "phases": json.dumps(rec.phases),
                    "env": json.dumps(rec.env),
                    "source": rec.source,
                    "split": rec.split,
                },
            )
        assert versions(old) == [1]
        assert "method" not in shape(old)["columns"]
    finally:
        old.dispose()

    with Store.open(db_url) as store:
        assert versions(store.engine) == list(range(1, LATEST_VERSION + 1))
        (stored,) = store.list_measurements()
        # version 3: a run of a shipped source (cpu-matrix) is verified, any other source starts unverified
        assert stored == rec.model_copy(update={"id": stored.id, "verified": True})
        with store.engine.connect() as conn:
            method, fingerprint = conn.execute(select(measurements.c.method, measurements.c.fingerprint)).one()
        assert method == "lora"
        assert fingerprint == rec.fingerprint()
        assert store.comparable(rec.model_type, "lora", "cuda") is not None
        fresh = create_store_engine("sqlite://")
        try:
            upgrade(fresh)
            assert shape(store.engine) == shape(fresh)
        finally:
            fresh.dispose()


def test_workers_opening_together_migrate_once(db_url: str) -> None:
    stores: list[Store] = []
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def open_store() -> None:
        start.wait()
        try:
            stores.append(Store.open(db_url))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert versions(stores[0].engine) == list(range(1, LATEST_VERSION + 1))
    finally:
        for store in stores:
            store.close()


def test_a_newer_database_is_refused(db_url: str) -> None:
    with Store.open(db_url) as store, store.engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=99, description="future", applied_at=datetime(2030, 1, 1)))
    with pytest.raises(StoreError, match=r"schema version 99, newer than this gpuplan knows .*upgrade gpuplan"):
        Store.open(db_url)


def test_upgrade_refuses_unknown_targets(db_url: str) -> None:
    engine = create_store_engine(db_url)
    try:
        with pytest.raises(ValueError):
            upgrade(engine, target=LATEST_VERSION + 1)
    finally:
        engine.dispose()
