"""The measurement store: measured runs next to gpuplan's estimates, in SQLite or PostgreSQL.

Open one `Store` per process (e.g. in the app's lifespan) and share it between threads: the
engine pools connections and every method holds one only for its own short transaction (see
`app.store.engine` for how concurrent writers are handled).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, RowMapping, select, update

from app.errors import InputError, StoreError
from app.store.engine import create_store_engine, translated, write_transaction
from app.store.migrations import upgrade
from app.store.models import (
    DEFAULT_STACK,
    DEVICES,
    UNSPLIT,
    AccuracyStats,
    AccuracySummary,
    ComparableStats,
    MeasurementRecord,
    SourceSummary,
    canonical_json,
    checkpointing_of,
    layout_of,
    relative_error_pct,
    stack_of,
    utc,
)
from app.store.query import MeasurementFacets, MeasurementPage, MeasurementQuery
from app.store.schema import measurements

if TYPE_CHECKING:
    from app.settings import Settings

MAX_LIST_LIMIT = 10_000
_FINGERPRINT_CHUNK = 500  # parameters per IN (...) query, well under every backend's limit
IMPORT_BATCH = 500
# how long comparable() keeps an answer another process's writes could have changed, and how many it keeps
COMPARABLE_TTL_S = 5.0
COMPARABLE_MEMO_SIZE = 1024
"""Rows per write transaction of an import: each batch holds SQLite's write lock for a few milliseconds, so
uploads and other writers interleave with a 50,000-row import instead of waiting out its whole run."""


def _row_values(rec: MeasurementRecord, fingerprint: str | None = None) -> dict[str, Any]:
    return {
        "created_at": rec.created_at.replace(tzinfo=None),  # naive UTC: the same on SQLite and PostgreSQL
        "model_id": rec.model_id,
        "model_type": rec.model_type,
        "device": rec.device,
        "device_name": rec.device_name,
        "layers": rec.layers,
        "plan_json": canonical_json(rec.plan),
        "config_json": canonical_json(rec.config),
        "measured_peak_bytes": rec.measured_peak_bytes,
        "measured_reserved_bytes": rec.measured_reserved_bytes,
        "estimated_peak_bytes": rec.estimated_peak_bytes,
        "phases_json": canonical_json(rec.phases),
        "env_json": canonical_json(rec.env),
        "source": rec.source,
        "split": rec.split,
        "method": rec.method,
        "fingerprint": fingerprint or rec.fingerprint(),
        "verified": rec.verified,
        "timing_json": canonical_json(rec.timing.model_dump(mode="json")) if rec.timing is not None else None,
    }


def _record(m: RowMapping) -> MeasurementRecord:
    return MeasurementRecord(
        id=m["id"],
        created_at=utc(m["created_at"]),
        model_id=m["model_id"],
        model_type=m["model_type"],
        device=m["device"],
        device_name=m["device_name"],
        layers=m["layers"],
        plan=json.loads(m["plan_json"]),
        config=json.loads(m["config_json"]),
        measured_peak_bytes=m["measured_peak_bytes"],
        measured_reserved_bytes=m["measured_reserved_bytes"],
        estimated_peak_bytes=m["estimated_peak_bytes"],
        phases=json.loads(m["phases_json"]),
        env=json.loads(m["env_json"]),
        source=m["source"],
        split=m["split"],
        verified=bool(m["verified"]),
        timing=json.loads(m["timing_json"]) if m["timing_json"] else None,
    )


def _check_device(device: str | None) -> None:
    if device is not None and device not in DEVICES:
        raise InputError(
            f"unknown device {device!r}: use one of {', '.join(DEVICES)}",
            errors=[{"loc": ["device"], "msg": f"must be one of {', '.join(DEVICES)}", "input": device}],
        )


def _stats(rows: Iterable[RowMapping]) -> AccuracyStats | None:
    errors = [relative_error_pct(row["estimated_peak_bytes"], row["measured_peak_bytes"]) for row in rows]
    return AccuracyStats.from_errors(errors) if errors else None


def _by_source(rows: Sequence[RowMapping]) -> list[SourceSummary]:
    out = []
    for source in sorted({row["source"] for row in rows}):
        mine = [row for row in rows if row["source"] == source]
        stats = _stats(mine)
        assert stats is not None  # every source listed has a row
        verified = sum(1 for row in mine if row["verified"])
        out.append(SourceSummary(source=source, runs=len(mine), verified_runs=verified, accuracy=stats))
    return out


def comparable_rows(
    rows: Sequence[RowMapping],
    model_type: str,
    checkpointing: str | None,
    gpus: int,
    sharding: str,
    stack: str = DEFAULT_STACK,
) -> tuple[list[RowMapping], bool, str | None, str] | None:
    """The first non-empty group of `rows` (all of one method and device) in widening order, with whether
    model_type and which checkpointing it matched, and the words for how it was drawn. Runs of another software
    stack (transformers 4 against 5) never count."""
    same_layout = [
        row
        for row in rows
        if layout_of(plan := json.loads(row["plan_json"])) == (gpus, sharding)
        and stack_of(plan) == stack
        and row["estimated_peak_bytes"] > 0
    ]
    layout = f"{gpus} GPU{'s' * (gpus > 1)}" + (f", {sharding}" if sharding != "none" else ", no sharding")
    layout += f", {stack}" if stack != DEFAULT_STACK else ""
    steps = [(True, checkpointing), (False, checkpointing)]
    if checkpointing is not None:
        steps += [(True, None), (False, None)]
    for typed, ckpt in steps:
        chosen = [
            row
            for row in same_layout
            if (not typed or row["model_type"] == model_type)
            and (ckpt is None or checkpointing_of(json.loads(row["plan_json"])) == ckpt)
        ]
        if chosen:
            kept = [
                "same method and device",
                layout,
                *(["model type"] if typed else []),
                *(["checkpointing"] if ckpt else []),
            ]
            dropped = [
                *([] if typed else ["model type"]),
                *([] if ckpt or checkpointing is None else ["checkpointing"]),
            ]
            words = ", ".join(kept) + (f"; widened: any {' and any '.join(dropped)}" if dropped else "")
            return chosen, typed, ckpt, words
    return None


class NotCached(LookupError):
    """comparable(cached_only=True) has no fresh answer kept: ask again without cached_only (it queries)."""


class Store:
    """Measured runs and the accuracy of gpuplan's estimates on them."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose database is already migrated; use `Store.open` instead."""
        self._engine = engine
        # comparable() answers every estimate request; its rows change only on writes (forgotten here at once)
        # or in another process (seen after COMPARABLE_TTL_S)
        self._comparable_memo: dict[tuple[Any, ...], tuple[float, ComparableStats | None]] = {}
        self._timed_memo: dict[str, tuple[float, list[MeasurementRecord]]] = {}
        self._memo_lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect to `url` (sqlite:///... or postgresql+psycopg://...) and apply missing migrations."""
        engine = create_store_engine(url)
        try:
            with translated(engine, "open and migrate the database"):
                upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store at `settings.database_url`, or SQLite under `settings.data_dir`."""
        return cls.open(settings.sqlite_url)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (e.g. for event hooks in tests)."""
        return self._engine

    def close(self) -> None:
        """Checkpoint the WAL and close every pooled connection; the store must not be used afterwards."""
        try:
            self.checkpoint()
        finally:
            self._engine.dispose()

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database and truncate it to zero bytes.

        Run after imports and on close, so the WAL does not grow with every import; a reader holding
        an old snapshot only makes it a partial checkpoint (the log is then reused, never lost).
        A no-op on PostgreSQL and for in-memory databases.
        """
        if self._engine.dialect.name != "sqlite" or self._engine.url.database in (None, "", ":memory:"):
            return
        with translated(self._engine, "checkpoint the write-ahead log"):
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cursor.close()
            finally:
                raw.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    def add_measurement(self, rec: MeasurementRecord) -> int:
        """Store one run in one transaction and return its new id (`rec.id` is ignored)."""
        return self.add_many([rec])[0]

    def add_many(self, recs: Iterable[MeasurementRecord]) -> list[int]:
        """Store runs in one transaction: all of them or, if anything fails, none. Returns their ids in order."""
        items = list(recs)
        if not items:
            return []
        self._forget_comparable()
        with translated(self._engine, "store measurements"), write_transaction(self._engine) as conn:
            return self._insert(conn, items)

    def _forget_comparable(self) -> None:
        with self._memo_lock:
            self._comparable_memo.clear()
            self._timed_memo.clear()

    def add_new(self, recs: Iterable[MeasurementRecord], *, batch_size: int = IMPORT_BATCH) -> int:
        """Store the runs not stored yet (same fingerprint; also repeated within `recs`), `batch_size` per
        transaction, and checkpoint the WAL; returns the runs added.

        An interrupted import keeps its finished batches, and running it again adds only the rest.
        """
        items = [(rec, rec.fingerprint()) for rec in recs]
        self._forget_comparable()
        added = 0
        taken: set[str] = set()
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            with (
                translated(self._engine, "import measurements"),
                write_transaction(self._engine, serialize=True) as conn,
            ):
                # read under the write lock: another import may have stored some of these since
                taken |= self._stored_fingerprints(conn, [key for _, key in batch])
                fresh = []
                for rec, key in batch:
                    if key not in taken:
                        taken.add(key)
                        fresh.append(_row_values(rec, key))
                if fresh:
                    conn.execute(measurements.insert(), fresh)
            added += len(fresh)
        if added:
            self.checkpoint()
        return added

    def accept(self, source: str) -> int:
        """Mark every unverified run of `source` verified (an operator vouches for it); returns how many."""
        self._forget_comparable()
        m = measurements.c
        query = update(measurements).where(m.source == source, m.verified.is_(False)).values(verified=True)
        with translated(self._engine, "accept measurements"), write_transaction(self._engine) as conn:
            return int(conn.execute(query).rowcount or 0)

    @staticmethod
    def _insert(conn: Connection, items: Sequence[MeasurementRecord]) -> list[int]:
        ids: list[int] = []
        for rec in items:
            result = conn.execute(measurements.insert().values(**_row_values(rec)))
            (new_id,) = result.inserted_primary_key or (None,)
            if new_id is None:
                raise StoreError("the database did not return the id of a new measurement")
            ids.append(int(new_id))
        return ids

    # -- reads ----------------------------------------------------------------------------------

    def get_measurement(self, measurement_id: int) -> MeasurementRecord | None:
        """The run with this id, or None."""
        with translated(self._engine, "read a measurement"), self._engine.connect() as conn:
            row = conn.execute(select(measurements).where(measurements.c.id == measurement_id)).mappings().first()
        return None if row is None else _record(row)

    def list_measurements(
        self,
        model: str | None = None,
        device: str | None = None,
        source: str | None = None,
        limit: int = 500,
        verified: bool | None = None,
    ) -> list[MeasurementRecord]:
        """Stored runs, newest first, optionally only those of one model id, device, source or verification."""
        _check_device(device)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InputError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}",
                errors=[{"loc": ["limit"], "msg": f"must be between 1 and {MAX_LIST_LIMIT}", "input": limit}],
            )
        query = select(measurements)
        if model is not None:
            query = query.where(measurements.c.model_id == model)
        if device is not None:
            query = query.where(measurements.c.device == device)
        if source is not None:
            query = query.where(measurements.c.source == source)
        if verified is not None:
            query = query.where(measurements.c.verified.is_(verified))
        query = query.order_by(measurements.c.created_at.desc(), measurements.c.id.desc()).limit(limit)
        with translated(self._engine, "list measurements"), self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_record(row) for row in rows]

    def page_measurements(self, query: MeasurementQuery) -> MeasurementPage:
        """One page of the runs matching `query`'s filters, in its sort order, with the count of every match."""
        from app.store.listing import page_rows

        with translated(self._engine, "list measurements"):
            rows, total = page_rows(self._engine, query)
        return MeasurementPage(records=[_record(r) for r in rows], total=total, offset=query.offset, limit=query.limit)

    def chart_points(self, query: MeasurementQuery, limit: int) -> list[tuple[str, str, int, int]]:
        """(model id, device, estimated, measured) of every run matching `query`'s filters, at most `limit`."""
        from app.store.listing import chart_rows

        with translated(self._engine, "list measurements"):
            rows = chart_rows(self._engine, query, limit)
        return [(r["model_id"], r["device"], r["estimated_peak_bytes"], r["measured_peak_bytes"]) for r in rows]

    def facets(self) -> MeasurementFacets:
        """The families, methods and sources stored, for filters."""
        from app.store.listing import facets

        with translated(self._engine, "list measurements"):
            return facets(self._engine)

    def accuracy(self, device: str | None = None) -> AccuracySummary:
        """Accuracy over the verified runs (of one device, if given), overall, per device and per split; the
        unverified runs apart, and every source on its own."""
        _check_device(device)
        m = measurements.c
        query = select(m.device, m.split, m.source, m.verified, m.measured_peak_bytes, m.estimated_peak_bytes)
        if device is not None:
            query = query.where(m.device == device)
        with translated(self._engine, "compute accuracy"), self._engine.connect() as conn:
            every = conn.execute(query).mappings().all()
        rows = [row for row in every if row["verified"]]
        by_device = {key: _stats(row for row in rows if row["device"] == key) for key in DEVICES}
        by_split = {
            key: _stats(row for row in rows if (row["split"] or UNSPLIT) == key) for key in ("tune", "holdout", UNSPLIT)
        }
        return AccuracySummary(
            overall=_stats(rows),
            by_device={key: stats for key, stats in by_device.items() if stats is not None},
            by_split={key: stats for key, stats in by_split.items() if stats is not None},
            unverified=_stats(row for row in every if not row["verified"]),
            by_source=_by_source(every),
        )

    def comparable(
        self,
        model_type: str,
        method: str,
        device: str,
        *,
        checkpointing: str | None = None,
        gpus: int = 1,
        sharding: str = "none",
        stack: str = DEFAULT_STACK,
        cached_only: bool = False,
    ) -> ComparableStats | None:
        """Accuracy (and the signed residuals) on verified stored runs like this plan; None when none exist.

        Always the same method, device, GPU count and sharding: a run on one device says nothing about a
        sharded 8-GPU step. Within those, the closest match that has runs, widened step by step (`widened`
        says which): same model_type and checkpointing, then any model_type, then any checkpointing with the
        model_type, then any of either. `checkpointing` None skips that field. Answers are kept for
        COMPARABLE_TTL_S (writes through this store forget them at once); `cached_only` answers from those alone
        and raises NotCached otherwise (so an event loop can ask without blocking on the database)."""
        _check_device(device)
        key = (model_type, method, device, checkpointing, gpus, sharding, stack)
        now = time.monotonic()
        with self._memo_lock:
            hit = self._comparable_memo.get(key)
        if hit is not None and now - hit[0] < COMPARABLE_TTL_S:
            return hit[1]
        if cached_only:
            raise NotCached(key)
        found = self._comparable(model_type, method, device, checkpointing, gpus, sharding, stack)
        with self._memo_lock:
            if len(self._comparable_memo) >= COMPARABLE_MEMO_SIZE:
                self._comparable_memo.clear()
            self._comparable_memo[key] = (now, found)
        return found

    def _comparable(
        self,
        model_type: str,
        method: str,
        device: str,
        checkpointing: str | None,
        gpus: int,
        sharding: str,
        stack: str = DEFAULT_STACK,
    ) -> ComparableStats | None:
        m = measurements.c
        query = select(m.model_type, m.plan_json, m.measured_peak_bytes, m.estimated_peak_bytes).where(
            m.method == method, m.device == device, m.verified.is_(True)
        )
        with translated(self._engine, "find comparable measurements"), self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        found = comparable_rows(rows, model_type, checkpointing, gpus, sharding, stack)
        if found is None:
            return None
        chosen, typed, ckpt, widened = found
        stats = _stats(chosen)
        assert stats is not None  # comparable_rows never returns an empty group
        residuals = sorted(
            (row["estimated_peak_bytes"] - row["measured_peak_bytes"]) / row["measured_peak_bytes"] for row in chosen
        )
        return ComparableStats(
            **stats.model_dump(),
            scope="model_type" if typed else "method",
            model_type=model_type if typed else None,
            method=method,
            device=device,  # _check_device checked it
            checkpointing=ckpt,
            gpus=gpus,
            sharding=sharding,
            residuals=tuple(residuals),
            widened=widened,
        )

    def timed_runs(self, method: str, *, cached_only: bool = False) -> list[MeasurementRecord]:
        """Verified CUDA runs of `method` that carry measured step times (the time model is held against them);
        kept COMPARABLE_TTL_S like comparable()'s answers, `cached_only` raising NotCached without a fresh one."""
        now = time.monotonic()
        with self._memo_lock:
            hit = self._timed_memo.get(method)
        if hit is not None and now - hit[0] < COMPARABLE_TTL_S:
            return hit[1]
        if cached_only:
            raise NotCached(("timed", method))
        m = measurements.c
        query = select(measurements).where(
            m.method == method, m.device == "cuda", m.verified.is_(True), m.timing_json.is_not(None)
        )
        with translated(self._engine, "find measured step times"), self._engine.connect() as conn:
            found = [_record(row) for row in conn.execute(query).mappings().all()]
        with self._memo_lock:
            self._timed_memo[method] = (now, found)
        return found

    # -- JSON Lines -----------------------------------------------------------------------------

    def export_jsonl(self, path: str | Path, *, source: str | None = None) -> int:
        """Write every run (of one source, if given) to `path`, oldest first, one JSON object a line.

        The file is replaced atomically, so a reader never sees half of it. Returns the runs written.
        """
        query = select(measurements).order_by(measurements.c.id)
        if source is not None:
            query = query.where(measurements.c.source == source)
        with translated(self._engine, "export measurements"), self._engine.connect() as conn:
            records = [_record(row) for row in conn.execute(query).mappings().all()]
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                    for rec in records:
                        out.write(rec.model_dump_json() + "\n")
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return len(records)

    def import_jsonl(self, path: str | Path, *, source: str | None = None, verified: bool | None = None) -> int:
        """Add the runs in a JSON Lines file (as `export_jsonl` writes), IMPORT_BATCH per transaction.

        Ids and `error_pct` in the file are ignored; `source`, if given, replaces each run's source, and
        `verified`, if given, each run's verification. Runs already stored (same fingerprint) are skipped,
        so importing a file again adds nothing. Returns the runs added. Every line is read and checked
        first: a bad line raises InputError naming it, and nothing is added.
        """
        records = read_jsonl(Path(path), source)
        if verified is not None:
            records = [rec.model_copy(update={"verified": verified}) for rec in records]
        return self.add_new(records)

    @staticmethod
    def _stored_fingerprints(conn: Connection, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(keys))
        for start in range(0, len(unique), _FINGERPRINT_CHUNK):
            chunk = unique[start : start + _FINGERPRINT_CHUNK]
            query = select(measurements.c.fingerprint).where(measurements.c.fingerprint.in_(chunk))
            found.update(conn.execute(query).scalars())
        return found


def read_jsonl(path: Path, source: str | None = None) -> list[MeasurementRecord]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    records: list[MeasurementRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
        data.pop("id", None)
        data.pop("error_pct", None)  # computed from the bytes
        if source is not None:
            data["source"] = source
        try:
            records.append(MeasurementRecord.model_validate(data))
        except ValidationError as exc:
            problems = exc.errors(include_url=False, include_context=False)
            first = problems[0]
            where = ".".join(str(part) for part in first["loc"]) or "record"
            raise InputError(
                f"{path}:{number}: not a measurement: {where}: {first['msg']}",
                errors=[{"loc": list(p["loc"]), "msg": p["msg"], "line": number} for p in problems],
            ) from exc
    return records
