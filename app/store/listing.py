"""SQL of the paged, filtered, sorted list of stored runs (GET /api/v1/calibrations, /calibrations)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, func, select

from app.store.query import MeasurementFacets, MeasurementQuery
from app.store.schema import measurements

m = measurements.c


def _error() -> ColumnElement[Any]:
    """(estimated - measured) / measured, as a float on SQLite and PostgreSQL alike (measured > 0 is enforced)."""
    return (m.estimated_peak_bytes - m.measured_peak_bytes) * 1.0 / m.measured_peak_bytes


def _sort_column(key: str) -> ColumnElement[Any]:
    columns: dict[str, ColumnElement[Any]] = {
        "measured_at": m.created_at,
        "model": m.model_id,
        "family": m.model_type,
        "method": m.method,
        "error": _error(),
        "abs_error": func.abs(_error()),
        "estimated": m.estimated_peak_bytes,
        "measured": m.measured_peak_bytes,
    }
    return columns[key]


def filtered(query: MeasurementQuery, base: Select[Any]) -> Select[Any]:
    """`base` with a WHERE clause per filter that is set."""
    wanted = {
        m.model_id: query.model,
        m.model_type: query.family,
        m.method: query.method,
        m.device: query.device,
        m.source: query.source,
    }
    for column, value in wanted.items():
        if value is not None:
            base = base.where(column == value)
    if query.verified is not None:
        base = base.where(m.verified.is_(query.verified))
    return base


def page_rows(engine: Engine, query: MeasurementQuery) -> tuple[list[Any], int]:
    """The page's rows (sorted, then by id, newest first, for a stable order) and the count of every match."""
    key = query.sort.removeprefix("-")
    column = _sort_column(key)
    order = column.desc() if query.sort.startswith("-") else column.asc()
    rows_query = filtered(query, select(measurements)).order_by(order, m.id.desc())
    rows_query = rows_query.offset(query.offset).limit(query.limit)
    count_query = filtered(query, select(func.count()).select_from(measurements))
    with engine.connect() as conn:
        total = int(conn.execute(count_query).scalar_one())
        rows = list(conn.execute(rows_query).mappings().all())
    return rows, total


def chart_rows(engine: Engine, query: MeasurementQuery, limit: int) -> list[Any]:
    """Every matching run's estimate, measurement, device and model (at most `limit`), for the scatter chart."""
    cols = select(m.model_id, m.device, m.estimated_peak_bytes, m.measured_peak_bytes)
    with engine.connect() as conn:
        return list(conn.execute(filtered(query, cols).order_by(m.id).limit(limit)).mappings().all())


def facets(engine: Engine) -> MeasurementFacets:
    """The distinct families, methods and sources stored."""
    with engine.connect() as conn:
        values = {
            name: sorted(v for (v,) in conn.execute(select(column).distinct()) if v)
            for name, column in (("families", m.model_type), ("methods", m.method), ("sources", m.source))
        }
    return MeasurementFacets(**values)
