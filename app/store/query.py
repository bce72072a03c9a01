"""Which stored runs to list: filters, sort order and page (validated), and the page that answers it; no SQL."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.store.models import MeasurementRecord, StoreDevice

PAGE_SIZE = 100
MAX_PAGE = 1000
MAX_OFFSET = 10_000_000
# sort keys; a leading "-" sorts descending. error is signed (estimated - measured) / measured.
SORT_KEYS = ("measured_at", "model", "family", "method", "error", "abs_error", "estimated", "measured")
Sort = Literal[
    "measured_at",
    "-measured_at",
    "model",
    "-model",
    "family",
    "-family",
    "method",
    "-method",
    "error",
    "-error",
    "abs_error",
    "-abs_error",
    "estimated",
    "-estimated",
    "measured",
    "-measured",
]
Method = Literal["qlora", "lora", "full"]


class MeasurementQuery(BaseModel):
    """Filters (each optional), a sort key and a page of the stored runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=200, description="Only runs of this model id.")
    family: str | None = Field(
        None, min_length=1, max_length=100, description="Only runs of this model family (config.json's model_type)."
    )
    method: Method | None = Field(None, description="Only runs of this fine-tuning method.")
    device: StoreDevice | None = Field(None, description="Only runs on this device.")
    source: str | None = Field(None, min_length=1, max_length=64, description="Only runs of this source.")
    verified: bool | None = Field(None, description="Only verified (true) or unverified (false) runs.")
    sort: Sort = Field(
        "-measured_at",
        description=f"Sort key, '-' first for descending: {', '.join(SORT_KEYS)}. Ties go to the newest id.",
    )
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Runs to skip (the page starts after them).")
    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE, description="At most this many runs in the page.")

    def filters(self) -> dict[str, object]:
        """The filters that are set, as query-string values."""
        chosen = self.model_dump(include={"model", "family", "method", "device", "source", "verified"})
        return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in chosen.items() if v is not None}


class MeasurementPage(BaseModel):
    """One page of stored runs: the runs, how many match in all, and where the page starts."""

    model_config = ConfigDict(frozen=True)

    records: list[MeasurementRecord]
    total: int = Field(ge=0, description="Runs matching the filters, on every page.")
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None

    @property
    def prev_offset(self) -> int | None:
        return None if self.offset == 0 else max(self.offset - self.limit, 0)


class MeasurementFacets(BaseModel):
    """The values the filters can take in this store (for the page's drop-downs)."""

    model_config = ConfigDict(frozen=True)

    families: list[str]
    methods: list[str]
    sources: list[str]
