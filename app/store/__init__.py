"""The measurement store, the only place with SQL: measured runs and the accuracy of estimates on them."""

from app.store.db import Store
from app.store.models import AccuracyStats, AccuracySummary, ComparableStats, MeasurementRecord

__all__ = ["AccuracyStats", "AccuracySummary", "ComparableStats", "MeasurementRecord", "Store"]
