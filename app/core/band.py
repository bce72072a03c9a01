"""The uncertainty band on the headline: the range the real peak is likely in, from comparable measured runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BandSource = Literal["cpu", "cuda"]
BandMethod = Literal["5th-95th percentile", "observed range"]

MIN_BAND_RUNS = 3
"""Fewer comparable runs than this give no band: two runs cover the next one only a third of the time."""
QUANTILE_RUNS = 19
"""From this many runs the band is the 5th–95th percentile; below it, the observed range (which then covers
(n − 1)/(n + 1) < 90 % of new runs, so the percentiles would claim more than the runs can show)."""
LOW_Q, HIGH_Q = 0.05, 0.95
SOURCE_LABEL = {"cpu": "CPU reference tracker", "cuda": "CUDA measurements"}


class UncertaintyBand(BaseModel):
    """The range the measured peak of this plan is likely in, and what it rests on."""

    model_config = ConfigDict(frozen=True)

    estimate_bytes: int = Field(description="The estimate the band is around (device bytes per GPU).")
    low_bytes: int = Field(description="Lower end: estimate / (1 + highest residual taken).")
    high_bytes: int = Field(description="Upper end: estimate / (1 + lowest residual taken).")
    coverage: float = Field(
        description="Share of new comparable runs expected inside the band: 0.90 for the 5th-95th percentile, "
        "(n - 1)/(n + 1) for the observed range of n runs."
    )
    method: BandMethod
    runs: int = Field(description="Comparable verified runs the band comes from.")
    source: BandSource = Field(description="cpu: the CPU reference tracker; cuda: measured on GPUs.")
    residual_low: float = Field(description="Lowest signed residual taken, (estimate - measured)/measured.")
    residual_high: float = Field(description="Highest signed residual taken.")
    scope: str = Field("", description="Which runs counted as comparable, and how the match was widened.")

    @property
    def source_label(self) -> str:
        return SOURCE_LABEL[self.source]

    @property
    def safety_factor(self) -> float:
        """high / estimate, never below 1: what the safe answer multiplies every per-GPU estimate by."""
        return max(1.0, self.high_bytes / self.estimate_bytes) if self.estimate_bytes else 1.0


class BandAnswer(BaseModel):
    """A band, or None with the reason there is none (no comparable runs, too few)."""

    model_config = ConfigDict(frozen=True)

    band: UncertaintyBand | None
    reason: str | None = Field(None, description="Why `band` is None.")


def quantile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, R type 7): the value at fraction × (n − 1)."""
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def uncertainty_band(
    estimate_bytes: int, residuals: Sequence[float], source: BandSource, scope: str = ""
) -> BandAnswer:
    """The likely range of the measured peak, from signed residuals r = (estimate − measured) / measured.

    A run with residual r measured estimate / (1 + r), so this plan's measured peak is likely in
    [estimate / (1 + r_high), estimate / (1 + r_low)]. "Likely" is stated, never implied:
    - n ≥ QUANTILE_RUNS (19): r_low, r_high are the 5th and 95th percentiles of the residuals (linear
      interpolation); the band is expected to hold 90 % of new comparable runs.
    - MIN_BAND_RUNS (3) ≤ n < 19: r_low, r_high are the smallest and largest residual; for exchangeable runs a new
      one falls inside the range of n with probability (n − 1)/(n + 1) (e.g. 50 % at n = 3), which is the coverage
      quoted.
    - n < 3: no band, with the reason.
    """
    runs = len(residuals)
    if runs < MIN_BAND_RUNS:
        why = "no comparable measured runs" if runs == 0 else f"only {runs} comparable measured run{'s' * (runs > 1)}"
        return BandAnswer(band=None, reason=f"{why}: a band needs at least {MIN_BAND_RUNS}")
    ordered = sorted(residuals)
    if runs >= QUANTILE_RUNS:
        r_low, r_high = quantile(ordered, LOW_Q), quantile(ordered, HIGH_Q)
        method: BandMethod = "5th-95th percentile"
        coverage = HIGH_Q - LOW_Q
    else:
        r_low, r_high = ordered[0], ordered[-1]
        method, coverage = "observed range", (runs - 1) / (runs + 1)
    band = UncertaintyBand(
        estimate_bytes=estimate_bytes,
        low_bytes=math.floor(estimate_bytes / (1 + r_high)),
        high_bytes=math.ceil(estimate_bytes / (1 + r_low)),
        coverage=round(coverage, 4),
        method=method,
        runs=runs,
        source=source,
        residual_low=r_low,
        residual_high=r_high,
        scope=scope,
    )
    return BandAnswer(band=band)
