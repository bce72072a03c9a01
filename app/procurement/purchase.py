"""The purchase both halves make: the GPUs of each, what they cost, and the one line that says it.

Training is priced as its run (the option's on-demand $/GPU-hour x GPUs x hours); serving as the recommended GPUs
around the clock, per hour and per 30-day month (app/procurement/costs.py). The two are stated side by side, never
summed: a run's cost and a monthly bill are different units. Every price is shown with its date.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.prices import Price
from app.exports.report import hours, usd
from app.procurement.build import Procurement, ServingHalf, TrainingHalf
from app.procurement.costs import ServingCost


@dataclass(frozen=True)
class PurchaseRow:
    """One half's GPUs: what for, how many of which tier, their dated prices and what they cost."""

    what: str
    gpus: int
    gpu: str
    price: Price | None
    list_price: Price | None
    cost: str
    purchase_usd: float | None

    @property
    def price_text(self) -> str:
        return self.price.label if self.price is not None else f"no dated price for {self.gpu}"

    @property
    def list_text(self) -> str:
        """'1 x $1,999 list price at NVIDIA (launch MSRP) (as of 2025-01-07) = $1,999', or '-'."""
        if self.list_price is None or self.purchase_usd is None:
            return "-"
        return f"{self.gpus} x {self.list_price.label} = {usd(self.purchase_usd)}"


@dataclass(frozen=True)
class Purchase:
    """The GPUs both halves need, the total, the line that says it, and both halves' costs where both are priced."""

    rows: tuple[PurchaseRow, ...]
    line: str
    cost_line: str = ""

    @property
    def total_gpus(self) -> int:
        return sum(r.gpus for r in self.rows)

    @property
    def prices(self) -> tuple[Price, ...]:
        """Each dated price the rows quote, once (for the sources list)."""
        found = [p for r in self.rows for p in (r.price, r.list_price) if p is not None]
        return tuple(dict.fromkeys(found))


def serving_cost_text(cost: ServingCost) -> str:
    """'$1.48/h, $1,066/month' (and the serving period's total past one month), or 'no dated price for H200'."""
    if cost.per_hour_usd is None or cost.per_month_usd is None or cost.total_usd is None:
        return cost.unpriced
    text = f"{usd(cost.per_hour_usd)}/h, {usd(cost.per_month_usd)}/month"
    return text + (f", {usd(cost.total_usd)} for {cost.months:g} months" if cost.months != 1 else "")


def training_line(half: TrainingHalf) -> tuple[str, PurchaseRow | None]:
    """'training on 1 x H100 80GB for 3.8 h ~ $13.09 on demand' (the run's time and cost), or why none."""
    ch, o = half.choice, half.choice.option
    if ch.gpu is None or not ch.gpus:
        return f"training: {ch.summary}", None
    line, cost = f"training on {ch.gpus} x {ch.gpu}", "-"
    if o is not None:
        line += f" for {hours(o.hours)}"
        line += f" ~ {usd(o.cost_usd)} on demand" if o.cost_usd is not None else f" (no dated price for {ch.gpu})"
        cost = f"{usd(o.cost_usd)} for the {hours(o.hours)} run" if o.cost_usd is not None else "-"
    price, listed = (o.price, o.list_price) if o is not None else (None, None)
    bought = listed.usd * ch.gpus if listed is not None else None
    return line, PurchaseRow("training", ch.gpus, ch.gpu, price, listed, cost, bought)


def serving_line(half: ServingHalf) -> tuple[str, PurchaseRow | None]:
    """'serving on 2 x L40S (16 x 8,192 tokens on vllm) ~ $2,016/month on demand', or why no tier serves it."""
    est, rec, cost = half.estimate, half.estimate.recommendations, half.cost
    load = f"{est.plan.concurrency} x {est.plan.context:,} tokens on {est.plan.engine}"
    if rec is None:
        return f"serving: CPU reference plan, no GPU recommendation ({load})", None
    if not rec.recommended or not rec.recommended_gpus or cost is None:
        return f"serving: no GPU tier serves {load}", None
    line = f"serving on {cost.gpus} x {cost.gpu} ({load})"
    if cost.per_month_usd is None:
        line += f": {cost.unpriced}"
    else:
        line += f" ~ {usd(cost.per_month_usd)}/month on demand"
    text = serving_cost_text(cost)
    return line, PurchaseRow("serving", cost.gpus, cost.gpu, cost.price, cost.list_price, text, cost.purchase_usd)


def cost_line(proc: Procurement) -> str:
    """Both halves' costs as two figures, where both are priced: '$4.22 for the training run + $1,066 per 30-day
    month of serving' (with the serving period's total past one month); '' otherwise."""
    option = proc.train.choice.option if proc.train else None
    cost = proc.serve.cost if proc.serve else None
    if option is None or option.cost_usd is None or cost is None or cost.per_month_usd is None:
        return ""
    line = f"{usd(option.cost_usd)} for the training run + {usd(cost.per_month_usd)} per 30-day month of serving"
    months = f" ({usd(cost.total_usd)} for {cost.months:g} months)" if cost.months != 1 else ""
    return line + months


def purchase(proc: Procurement) -> Purchase:
    """Both halves' GPUs in one line, the total to buy (or rent), and what both cost where both are priced."""
    said = [training_line(proc.train)] if proc.train else []
    said += [serving_line(proc.serve)] if proc.serve else []
    parts = [line for line, _ in said]
    rows = [row for _, row in said if row is not None]
    total = sum(r.gpus for r in rows)
    if rows:
        tiers = {r.gpu for r in rows}
        per_tier = f"{total} x {rows[0].gpu}" if len(tiers) == 1 else " + ".join(f"{r.gpus} x {r.gpu}" for r in rows)
        parts.append(f"{total} GPU{'s' if total != 1 else ''} in all ({per_tier})")
    priced = cost_line(proc)
    if priced:
        parts.append(f"priced: {priced}")
    return Purchase(rows=tuple(rows), line="; ".join(parts), cost_line=priced)
