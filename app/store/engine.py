"""SQLAlchemy engines for the store: URL checks, SQLite pragmas, write transactions and error translation.

Concurrency: several web workers (processes and threads) share one database, so every write is
one short transaction and nothing holds a connection between requests.

* SQLite runs in WAL mode: readers never block the writer nor the writer the readers. A writer
  takes the write lock up front (``BEGIN IMMEDIATE``) and a second writer waits for it up to the
  busy timeout (``BUSY_TIMEOUT_MS``) instead of failing at once with "database is locked".
* PostgreSQL needs nothing special for plain inserts. Work that reads and then writes on the
  strength of what it read (migrations, de-duplicating imports) also takes a transaction-scoped
  advisory lock, so two workers starting together apply each migration once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from app.errors import StoreError

BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite writer waits for another writer's lock before giving up."""
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes of write-ahead log SQLite keeps after a checkpoint resets it (it truncates anything beyond)."""

PG_LOCK_KEY = 0x67707570_6C616E  # "gpuplan" in ASCII, as the advisory lock's key
_IMMEDIATE = "gpuplan_begin_immediate"
PG_INSTALL_HINT = "pip install psycopg[binary]"


def parse_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it; `postgres://` and `postgresql://` are pointed at psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        safe = url.rpartition("@")[2]  # never echo credentials
        raise StoreError(
            f"{safe!r} is not a database URL: use sqlite:///path/to/file.sqlite3 or postgresql+psycopg://user@host/db"
        ) from exc
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def shown(url: URL) -> str:
    """The URL with its password hidden, for messages."""
    return url.render_as_string(hide_password=True)


def _sqlite_file(url: URL) -> Path | None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def create_store_engine(url: str) -> Engine:
    """An engine for `url`; for a SQLite file, its folder is created and WAL and a busy timeout are set."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        path = _sqlite_file(parsed)
        if path is None:
            # One shared in-memory database for every thread, instead of one per thread.
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of the SQLite store {path}: {exc.strerror}") from exc
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise StoreError(
            f"{shown(parsed)}: unknown database kind {parsed.drivername!r}; use sqlite:/// or postgresql+psycopg://"
        ) from exc
    except ImportError as exc:
        if backend == "postgresql":
            raise StoreError(
                f"{shown(parsed)} needs a PostgreSQL driver that is not installed ({exc.name or exc}): "
                f"{PG_INSTALL_HINT} and use a postgresql+psycopg:// URL"
            ) from exc
        raise StoreError(f"{shown(parsed)}: the database driver is not installed ({exc})") from exc
    except (ArgumentError, TypeError, ValueError) as exc:
        raise StoreError(f"{shown(parsed)}: cannot use this database URL: {exc}") from exc
    if backend == "sqlite":
        _sqlite_events(engine)
    return engine


def _enable_wal(cursor: Any) -> None:
    """Switch a SQLite file to WAL, retrying while another connection holds it: changing the journal mode can
    answer SQLITE_BUSY at once, without the busy handler (sqlite.org/wal.html, "Persistence of WAL mode"), when
    several workers open a fresh database together."""
    import sqlite3
    import time

    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_events(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions (so BEGIN IMMEDIATE is possible) and set pragmas."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite would otherwise BEGIN lazily on its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


@contextmanager
def write_transaction(engine: Engine, *, serialize: bool = False) -> Iterator[Connection]:
    """One short write transaction: committed when the block ends, rolled back entirely if it raises.

    `serialize=True` also makes concurrent callers with `serialize=True` run one after another on
    PostgreSQL (SQLite writers are serialized anyway).
    """
    with engine.connect() as conn:
        conn.execution_options(**{_IMMEDIATE: True})
        with conn.begin():
            if serialize and conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            yield conn


@contextmanager
def translated(engine: Engine, action: str) -> Iterator[None]:
    """Re-raise SQLAlchemy and driver failures as StoreError, naming the action and the database."""
    try:
        yield
    except SQLAlchemyError as exc:
        reason = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        reason = reason.strip().splitlines()[0] if reason.strip() else type(exc).__name__
        raise StoreError(f"measurement store {shown(engine.url)}: cannot {action}: {reason}") from exc
