"""Fixtures for the store tests: a fresh store per test (SQLite, and PostgreSQL when one can be started)
and a factory of hand-made records.

The PostgreSQL runs (marked slow) start one throwaway cluster per session with initdb/pg_ctl,
listening only on a Unix socket in a temporary folder, and give every test its own database.
They are skipped when psycopg or the PostgreSQL server programs are missing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app.store import MeasurementRecord, Store

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

MakeRecord = Callable[..., MeasurementRecord]


def record(
    *,
    minutes: int = 0,
    model_id: str = "meta-llama/Llama-3.2-1B",
    model_type: str = "llama",
    method: str = "qlora",
    device: str = "cpu",
    measured: int = 1_000_000,
    estimated: int = 1_100_000,
    source: str = "cpu-matrix",
    split: str | None = None,
    verified: bool = True,
    **extra: Any,
) -> MeasurementRecord:
    """A plausible (verified) record; `minutes` after T0, so tests can order records by creation time."""
    fields: dict[str, Any] = {
        "created_at": T0 + timedelta(minutes=minutes),
        "model_id": model_id,
        "model_type": model_type,
        "device": device,
        "device_name": "NVIDIA H200" if device == "cuda" else None,
        "layers": 2,
        "plan": {"method": method, "rank": 16, "seq_len": 512, "targets": "all-linear"},
        "config": {"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2},
        "measured_peak_bytes": measured,
        "measured_reserved_bytes": measured + 4096 if device == "cuda" else None,
        "estimated_peak_bytes": estimated,
        "phases": [
            {"label": "load", "current_bytes": measured // 2, "peak_bytes": measured // 2},
            {"label": "step1.backward", "current_bytes": measured // 3, "peak_bytes": measured},
        ],
        "env": {"torch": "2.13.0", "transformers": "5.0.0", "peft": "0.17.0", "bitsandbytes": None},
        "source": source,
        "split": split,
        "verified": verified,
    }
    fields.update(extra)
    return MeasurementRecord.model_validate(fields)


@pytest.fixture
def make_record() -> MakeRecord:
    return record


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Path]:
    """A throwaway PostgreSQL cluster; yields the folder of its Unix socket."""
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (pip install psycopg[binary])")
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="gpuplan-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "log"

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-k {root} -c listen_addresses='' -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a throwaway PostgreSQL: {exc}")
    try:
        yield root
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _pg_admin(socket_dir: Path, sql: str) -> None:
    engine = create_engine(f"postgresql+psycopg://postgres@/postgres?host={socket_dir}", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'data' / 'gpuplan.sqlite3').as_posix()}"
        return
    socket_dir: Path = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex}"
    _pg_admin(socket_dir, f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@/{name}?host={socket_dir}"
    finally:
        _pg_admin(socket_dir, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened
