"""The tables as the latest migration leaves them; queries use these, migrations keep their own frozen copies.

JSON lives in TEXT columns (portable between SQLite and PostgreSQL); timestamps are naive UTC.
A test checks that migrating an empty database yields exactly these columns and indexes.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(), nullable=False),
)

measurements = Table(
    "measurements",
    metadata,
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
    # version 2
    Column("method", String(32)),
    Column("fingerprint", String(64)),
    # version 3
    Column("verified", Boolean, nullable=False, server_default=text("FALSE")),
    # version 4
    Column("timing_json", Text),
    Index("ix_measurements_model_id", "model_id"),
    Index("ix_measurements_device", "device"),
    Index("ix_measurements_created_at", "created_at"),
    Index("ix_measurements_source", "source"),
    Index("ix_measurements_method_device_type", "method", "device", "model_type"),
    Index("ix_measurements_fingerprint", "fingerprint"),
    Index("ix_measurements_verified_source", "verified", "source"),
)
