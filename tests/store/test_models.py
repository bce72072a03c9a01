"""The store's value objects: error_pct, the accuracy maths, fingerprints, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from app.store.models import AccuracyStats, MeasurementRecord, percentile

from .conftest import MakeRecord


def test_error_pct_is_signed_relative_to_measured_and_rounded(make_record: MakeRecord) -> None:
    assert make_record(measured=1000, estimated=1100).error_pct == 10.0
    assert make_record(measured=1000, estimated=900).error_pct == -10.0
    assert make_record(measured=3, estimated=4).error_pct == 33.33
    assert make_record(measured=3, estimated=2).error_pct == -33.33
    assert make_record(measured=1000, estimated=1000).error_pct == 0.0


def test_error_pct_is_dumped_but_not_accepted_back(make_record: MakeRecord) -> None:
    data = make_record(measured=200, estimated=250).model_dump()
    assert data["error_pct"] == 25.0
    with pytest.raises(ValidationError):
        MeasurementRecord.model_validate(data)
    data.pop("error_pct")
    assert MeasurementRecord.model_validate(data) == make_record(measured=200, estimated=250)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 0.5) == 5.5
    assert percentile(values, 0.9) == pytest.approx(9.1)
    assert percentile(values, 1.0) == 10.0
    assert percentile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_accuracy_stats_on_hand_made_errors() -> None:
    # |errors| sorted: 1 2 3 4 5 6 7 8 9 10 → median 5.5, p90 at rank 8.1 → 9.1, max 10
    # signed sorted: -10 -8 -6 -4 -2 1 3 5 7 9 → median (-2 + 1) / 2 = -0.5
    errors = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 9.0, -10.0]
    assert AccuracyStats.from_errors(errors) == AccuracyStats(
        count=10,
        median_abs_error_pct=5.5,
        p90_abs_error_pct=9.1,
        max_abs_error_pct=10.0,
        median_error_pct=-0.5,
    )


def test_accuracy_stats_round_at_the_end_only() -> None:
    stats = AccuracyStats.from_errors([100 / 3, -100 / 3, 100 / 3])
    assert stats == AccuracyStats(
        count=3,
        median_abs_error_pct=33.33,
        p90_abs_error_pct=33.33,
        max_abs_error_pct=33.33,
        median_error_pct=33.33,
    )
    with pytest.raises(ValueError):
        AccuracyStats.from_errors([])


def test_created_at_becomes_utc(make_record: MakeRecord) -> None:
    plus_two = timezone(timedelta(hours=2))
    rec = make_record(created_at=datetime(2025, 1, 1, 14, 0, tzinfo=plus_two))
    assert rec.created_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert rec.created_at.utcoffset() == timedelta(0)
    naive = make_record(created_at=datetime(2025, 1, 1, 12, 0))
    assert naive.created_at == rec.created_at


def test_fingerprint_ignores_labels_and_estimate_but_not_the_run(make_record: MakeRecord) -> None:
    base = make_record()
    assert base.fingerprint() == make_record(source="upload", split="holdout", estimated=1, id=7).fingerprint()
    assert base.fingerprint() != make_record(measured=999_999).fingerprint()
    assert base.fingerprint() != make_record(minutes=1).fingerprint()
    assert base.fingerprint() != make_record(plan={"method": "lora"}).fingerprint()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "tpu"),
        ("split", "train"),
        ("measured_peak_bytes", 0),
        ("estimated_peak_bytes", -1),
        ("layers", 0),
        ("model_id", ""),
        ("phases", [{"label": "load", "peak_bytes": 1}]),
        ("unknown_field", 1),
    ],
)
def test_bad_records_are_refused(make_record: MakeRecord, field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        make_record(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_method_comes_from_the_plan(make_record: MakeRecord) -> None:
    assert make_record(method="full").method == "full"
    assert make_record(plan={}).method is None
