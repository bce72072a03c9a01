"""The uncertainty band: exact bounds on fixed residuals, its small-n rules, and the safe answer's factor."""

from __future__ import annotations

import pytest

from app.core.band import QUANTILE_RUNS, BandAnswer, quantile, uncertainty_band

ESTIMATE = 1_000_000_000


def test_band_of_twenty_residuals_is_the_5th_to_95th_percentile() -> None:
    # sorted: -0.5, -0.25, sixteen zeros, 0.25, 0.5 (n = 20, so positions are fraction × 19)
    residuals = [0.0] * 16 + [0.5, -0.25, 0.25, -0.5]
    answer = uncertainty_band(ESTIMATE, residuals, "cuda", "same method and device")
    band = answer.band
    assert band is not None and answer.reason is None
    # 5th percentile: position 0.95 -> -0.5 + 0.95 × (-0.25 - -0.5) = -0.2625
    # 95th percentile: position 18.05 -> 0.25 + 0.05 × (0.5 - 0.25) = 0.2625
    assert band.residual_low == pytest.approx(-0.2625) and band.residual_high == pytest.approx(0.2625)
    # low = floor(1e9 / 1.2625) = floor(792,079,207.92...); high = ceil(1e9 / 0.7375) = ceil(1,355,932,203.38...)
    assert (band.low_bytes, band.high_bytes) == (792_079_207, 1_355_932_204)
    assert band.method == "5th-95th percentile" and band.coverage == 0.9 and band.runs == 20
    assert band.source == "cuda" and band.source_label == "CUDA measurements"
    assert band.safety_factor == pytest.approx(1.355932204)


def test_band_of_few_runs_is_their_observed_range_with_its_honest_coverage() -> None:
    answer = uncertainty_band(ESTIMATE, [0.25, -0.5, 0.0, 0.125], "cpu")
    band = answer.band
    assert band is not None
    # range -0.5 .. 0.25: low = 1e9 / 1.25 = 800,000,000; high = 1e9 / 0.5 = 2,000,000,000
    assert (band.low_bytes, band.high_bytes) == (800_000_000, 2_000_000_000)
    assert band.method == "observed range" and band.coverage == 0.6  # (4 - 1) / (4 + 1)
    assert band.source_label == "CPU reference tracker"


def test_percentiles_start_at_nineteen_runs() -> None:
    below = uncertainty_band(ESTIMATE, [i / 100 for i in range(QUANTILE_RUNS - 1)], "cpu").band
    at = uncertainty_band(ESTIMATE, [i / 100 for i in range(QUANTILE_RUNS)], "cpu").band
    assert below is not None and below.method == "observed range" and below.coverage == pytest.approx(0.8947, abs=1e-4)
    assert at is not None and at.method == "5th-95th percentile"


@pytest.mark.parametrize(
    ("residuals", "reason"),
    [
        ([], "no comparable measured runs: a band needs at least 3"),
        ([0.1], "only 1 comparable measured run: a band needs at least 3"),
        ([0.1, -0.1], "only 2 comparable measured runs: a band needs at least 3"),
    ],
)
def test_too_few_runs_give_no_band_and_say_why(residuals: list[float], reason: str) -> None:
    assert uncertainty_band(ESTIMATE, residuals, "cuda") == BandAnswer(band=None, reason=reason)


def test_an_overestimating_history_never_makes_the_safe_answer_smaller() -> None:
    band = uncertainty_band(ESTIMATE, [0.1, 0.2, 0.3], "cpu").band  # gpuplan always over-estimated
    assert band is not None and band.high_bytes < ESTIMATE
    assert band.safety_factor == 1.0


def test_quantile_interpolates_between_closest_ranks() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0 and quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
