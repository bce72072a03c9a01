"""Ordered schema migrations, applied on open: plain Python steps, each in its own transaction.

A database records every step applied in `schema_version` (one row per version); opening it
applies the missing steps in order, each step and its version row committed together, so a step
either happened entirely or not at all. Applying is idempotent and safe when several workers
open the store at once (see `engine.write_transaction(serialize=True)`).

Each step defines the tables as they were at its version, never the current `schema.py` ones,
so an old database upgrades the same way however much the code has moved on. Never edit a
released step: append a new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
    update,
)

from app.errors import StoreError
from app.store.engine import shown, write_transaction
from app.store.models import run_fingerprint, utc
from app.store.schema import schema_version


@dataclass(frozen=True)
class Migration:
    """One step from `version - 1` to `version`."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_measurements(conn: Connection) -> None:
    meta = MetaData()
    Table(
        "measurements",
        meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("created_at", DateTime(), nullable=False),
        Column("model_id", String(200), nullable=False),
        Column("model_type", String(100), nullable=False),
        Column("device", String(8), nullable=False),
        Column("device_name", String(200)),
        Column("layers", Integer),
        Column("plan_json", Text, nullable=False),
        Column("config_json", Text, nullable=False),
        Column("measured_peak_bytes", BigInteger, nullable=False),
        Column("measured_reserved_bytes", BigInteger),
        Column("estimated_peak_bytes", BigInteger, nullable=False),
        Column("phases_json", Text, nullable=False),
        Column("env_json", Text, nullable=False),
        Column("source", String(64), nullable=False),
        Column("split", String(16)),
        Index("ix_measurements_model_id", "model_id"),
        Index("ix_measurements_device", "device"),
        Index("ix_measurements_created_at", "created_at"),
        Index("ix_measurements_source", "source"),
    )
    meta.create_all(conn)


def _v2_method_and_fingerprint(conn: Connection) -> None:
    # ADD COLUMN of a nullable column is the same SQL on SQLite and PostgreSQL.
    conn.execute(text("ALTER TABLE measurements ADD COLUMN method VARCHAR(32)"))
    conn.execute(text("ALTER TABLE measurements ADD COLUMN fingerprint VARCHAR(64)"))
    meta = MetaData()
    table = Table(
        "measurements",
        meta,
        Column("id", Integer, primary_key=True),
        Column("created_at", DateTime()),
        Column("model_id", String(200)),
        Column("model_type", String(100)),
        Column("device", String(8)),
        Column("device_name", String(200)),
        Column("layers", Integer),
        Column("plan_json", Text),
        Column("config_json", Text),
        Column("measured_peak_bytes", BigInteger),
        Column("measured_reserved_bytes", BigInteger),
        Column("phases_json", Text),
        Column("env_json", Text),
        Column("method", String(32)),
        Column("fingerprint", String(64)),
    )
    Index("ix_measurements_method_device_type", table.c.method, table.c.device, table.c.model_type).create(conn)
    Index("ix_measurements_fingerprint", table.c.fingerprint).create(conn)
    # Backfill: plan.method, denormalised for comparable(); the run fingerprint as version 2 defines it.
    for row in conn.execute(select(table)).mappings().all():
        plan: dict[str, Any] = json.loads(row["plan_json"])
        method = plan.get("method")
        identity = {
            "created_at": utc(row["created_at"]).isoformat(),
            "model_id": row["model_id"],
            "model_type": row["model_type"],
            "device": row["device"],
            "device_name": row["device_name"],
            "layers": row["layers"],
            "plan": plan,
            "config": json.loads(row["config_json"]),
            "measured_peak_bytes": row["measured_peak_bytes"],
            "measured_reserved_bytes": row["measured_reserved_bytes"],
            "phases": json.loads(row["phases_json"]),
            "env": json.loads(row["env_json"]),
        }
        conn.execute(
            update(table)
            .where(table.c.id == row["id"])
            .values(method=method if isinstance(method, str) else None, fingerprint=run_fingerprint(identity))
        )


# The sources gpuplan shipped (calibration/results/*.store.jsonl) when version 3 was written: the only rows
# an older database holds that are known to be verified. Everything else (uploads, but also the operator's
# own imports) starts unverified; `gpuplan accept-calibrations --source X` verifies a source.
_V3_SHIPPED_SOURCES = ("cpu-matrix", "cpu-validation")


def _v3_verified(conn: Connection) -> None:
    # FALSE/TRUE are keywords in SQLite (3.23+) and PostgreSQL alike.
    conn.execute(text("ALTER TABLE measurements ADD COLUMN verified BOOLEAN NOT NULL DEFAULT FALSE"))
    table = Table("measurements", MetaData(), Column("source", String(64)), Column("verified", Boolean))
    conn.execute(update(table).where(table.c.source.in_(_V3_SHIPPED_SOURCES)).values(verified=True))
    Index("ix_measurements_verified_source", table.c.verified, table.c.source).create(conn)


def _v4_timing(conn: Connection) -> None:
    # Measured step times and the time model for the same plan (JSON); NULL for every run recorded before.
    conn.execute(text("ALTER TABLE measurements ADD COLUMN timing_json TEXT"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "measurements table", _v1_measurements),
    Migration(2, "plan method and run fingerprint columns, backfilled", _v2_method_and_fingerprint),
    Migration(3, "verified column: shipped runs verified, uploads kept apart until accepted", _v3_verified),
    Migration(4, "timing column: measured step times next to the time model", _v4_timing),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The highest version applied; 0 for a database without `schema_version`."""
    if not conn.dialect.has_table(conn, schema_version.name):
        return 0
    return int(conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one())


def upgrade(engine: Engine, target: int = LATEST_VERSION) -> int:
    """Apply every missing step up to `target`, one transaction each; returns the version reached."""
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"no schema version {target}; this gpuplan knows 0 to {LATEST_VERSION}")
    while True:
        with write_transaction(engine, serialize=True) as conn:
            # Read under the lock: another worker may have applied the step since we last looked.
            schema_version.create(conn, checkfirst=True)
            version = current_version(conn)
            if version > LATEST_VERSION:
                raise StoreError(
                    f"the measurement store {shown(engine.url)} has schema version {version}, newer than "
                    f"this gpuplan knows ({LATEST_VERSION}): upgrade gpuplan"
                )
            if version >= target:
                return version
            step = MIGRATIONS[version]
            step.apply(conn)
            conn.execute(
                schema_version.insert().values(
                    version=step.version,
                    description=step.description,
                    applied_at=datetime.now(UTC).replace(tzinfo=None),
                )
            )
