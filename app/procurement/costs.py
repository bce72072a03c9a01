"""What the serving GPUs cost: on demand per hour and per 30-day month for the count recommended, and to buy.

The prices are the rows the training recommendations use (app/core/prices.py, the bundled table with the settings'
price file laid over it): the cheapest dated on-demand quote of the tier (`PriceTable.hourly`) and its list price
(`PriceTable.list_price`), each shown with its provider, source and "as of" date, never as a live rate.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.core.prices import Price, PriceTable
from app.serving.result import ServingRecommendation

HOURS_PER_MONTH = 720  # a 30-day month of 24 h, the unit a serving bill is stated in
MAX_SERVE_MONTHS = 120.0  # ten years: past that no dated quote means anything


class ServingCost(BaseModel):
    """`gpus` GPUs of `gpu` serving around the clock for `months` 30-day months, where the table prices the tier."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    gpus: int
    months: float = Field(description="30-day months of serving the total is for (serve_months, default 1).")
    price: Price | None = Field(description="The cheapest on-demand $/GPU-hour listed for the tier, with its date.")
    list_price: Price | None = Field(description="The tier's list (purchase) price per GPU, where published.")
    per_hour_usd: float | None = Field(description="price × gpus; None without an on-demand price.")
    per_month_usd: float | None = Field(description="per_hour_usd × 720 (a 30-day month).")
    total_usd: float | None = Field(description="per_month_usd × months.")
    purchase_usd: float | None = Field(description="list price × gpus; None without a list price.")

    @property
    def unpriced(self) -> str:
        """'no dated price for H200' (said plainly where the table has no on-demand row for the tier)."""
        return f"no dated price for {self.gpu}"


def serving_cost(gpu: str, gpus: int, prices: PriceTable, months: float = 1.0) -> ServingCost:
    """Renting `gpus` GPUs of the tier on demand: `usd/GPU-h × gpus` per hour, `× 720` per 30-day month (30 d ×
    24 h), `× months` for the serving period; buying them: `list price × gpus`. Prices: the dated rows of the
    table (app/core/data/prices.json or the price file), as the training run's cost uses them."""
    price, listed = prices.hourly(gpu), prices.list_price(gpu)
    per_hour = price.usd * gpus if price is not None else None
    per_month = per_hour * HOURS_PER_MONTH if per_hour is not None else None
    return ServingCost(
        gpu=gpu,
        gpus=gpus,
        months=months,
        price=price,
        list_price=listed,
        per_hour_usd=per_hour,
        per_month_usd=per_month,
        total_usd=per_month * months if per_month is not None else None,
        purchase_usd=listed.usd * gpus if listed is not None else None,
    )


def tier_costs(rec: ServingRecommendation, prices: PriceTable, months: float = 1.0) -> dict[str, ServingCost]:
    """Each tier's cost for the fewest GPUs of it that serve the load (tiers that cannot are left out)."""
    return {f.gpu: serving_cost(f.gpu, f.gpus_needed, prices, months) for f in rec.tiers if f.gpus_needed}
