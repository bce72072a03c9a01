"""The /calibrations page: stored runs filtered, sorted and paged by the server, with what each point measured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.exports.scatter import Point, scatter_chart
from app.http.deps import MeasurementStore
from app.http.problems import from_validation
from app.store.models import MeasurementRecord
from app.store.query import SORT_KEYS, MeasurementQuery

PAGE_SIZE = 50
CHART_LIMIT = 5000  # points drawn at most; the chart says when it shows fewer than match
SORT_LABELS = {
    "-measured_at": "newest first",
    "measured_at": "oldest first",
    "-abs_error": "largest |error| first",
    "abs_error": "smallest |error| first",
    "-error": "most over-estimated first",
    "error": "most under-estimated first",
    "-measured": "largest measured first",
    "-estimated": "largest estimated first",
    "measured": "smallest measured first",
    "model": "model A–Z",
    "family": "family A–Z",
    "method": "method A–Z",
}
assert {k.removeprefix("-") for k in SORT_LABELS} <= set(SORT_KEYS)


def page_query(params: Mapping[str, str]) -> MeasurementQuery:
    """The page's query string as a MeasurementQuery (empty fields, as a GET form sends them, are unset)."""
    given: dict[str, Any] = {k: v.strip() for k, v in params.items() if v.strip()}
    given.setdefault("limit", str(PAGE_SIZE))
    try:
        return MeasurementQuery.model_validate(given, strict=False)
    except ValidationError as exc:
        raise from_validation(exc) from None


def measured_what(record: MeasurementRecord) -> dict[str, str]:
    """The plan facts a reader needs to place a point: seq, batch, rank, checkpointing (from the stored plan)."""
    plan = record.plan
    checkpointing = str(plan.get("checkpointing", "every-layer")) if plan.get("gradient_checkpointing") else "off"
    rank = "–" if plan.get("method") == "full" else str(plan.get("rank", "–"))
    return {
        "seq": f"{plan['seq_len']:,}" if isinstance(plan.get("seq_len"), int) else "–",
        "batch": str(plan.get("batch_size", "–")),
        "rank": rank,
        "checkpointing": checkpointing,
    }


def _link(query: MeasurementQuery, **changes: object) -> str:
    chosen = query.model_copy(update=changes)
    params = {**chosen.filters(), "sort": chosen.sort, "offset": chosen.offset, "limit": chosen.limit}
    return "/calibrations?" + urlencode({k: v for k, v in params.items() if v is not None})


async def calibrations_context(store: MeasurementStore, params: Mapping[str, str]) -> dict[str, Any]:
    """Everything calibrations.html shows: the page of rows, the chart of every match, filters and links."""
    query = page_query(params)
    page = await run_in_threadpool(store.page_measurements, query)
    rows = await run_in_threadpool(store.chart_points, query, CHART_LIMIT)
    points = [
        Point(
            estimated=est,
            measured=meas,
            device=device,
            label=f"{model} ({device}): estimated {est:,} B, measured {meas:,} B",
        )
        for model, device, est, meas in rows
    ]
    return {
        "query": query,
        "page": page,
        "rows": [(r, measured_what(r)) for r in page.records],
        "facets": await run_in_threadpool(store.facets),
        "sorts": SORT_LABELS,
        "chart": Markup(scatter_chart(points)),  # our own SVG: every text in it is XML-escaped
        "charted": len(points),
        "next": None if page.next_offset is None else _link(query, offset=page.next_offset),
        "prev": None if page.prev_offset is None else _link(query, offset=page.prev_offset),
        "sort_link": {key: _link(query, sort=key, offset=0) for key in SORT_LABELS},
    }
