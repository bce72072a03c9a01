"""The measurement store, the only place with SQL: measured runs and the accuracy of estimates on them."""

from typing import TYPE_CHECKING, Any

from app.store.models import AccuracyStats, AccuracySummary, ComparableStats, MeasurementRecord

if TYPE_CHECKING:
    from app.store.db import Store


def __getattr__(name: str) -> Any:
    # SQLAlchemy loads only when the store is opened, so the models travel without it (e.g. to a GPU box)
    if name == "Store":
        from app.store.db import Store

        return Store
    raise AttributeError(name)


__all__ = ["AccuracyStats", "AccuracySummary", "ComparableStats", "MeasurementRecord", "Store"]
