"""The procurement report as JSON and Markdown (the page and its PDF render the same facts from report.html).

Each half: its headline (per-GPU GiB, the GPUs and their count; the run's time and cost for training, sequences of
the context per tier for serving), its breakdown terms with what backs them, the stack modelled; then one purchase
line for both (training on 1 x H100 80GB for 3.8 h ~ $13.09; serving on 2 x L40S ~ $2,016/month; 3 GPUs in all),
each half's GPUs with their dated prices and costs, and both costs as two figures where both halves are priced.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from app.core.units import GIB
from app.exports import report
from app.exports.stack import stack_versions
from app.procurement.build import Procurement, ServingHalf, TrainingHalf
from app.procurement.costs import HOURS_PER_MONTH
from app.procurement.purchase import Purchase, PurchaseRow, purchase, serving_cost_text, serving_line, training_line
from app.serving import report as serving_report
from app.serving.hf import TRANSFORMERS_SEMANTICS

REPORT_PATH = "/report"


def permalink(proc: Procurement) -> str:
    return f"{REPORT_PATH}?{urlencode(proc.query())}"


def serving_stack(half: ServingHalf) -> str:
    """The engine semantics the serving estimate models: the pinned vLLM release, or transformers' generate()."""
    return half.estimate.vllm_version or TRANSFORMERS_SEMANTICS


def training_payload(half: TrainingHalf) -> dict[str, Any]:
    ch = half.choice
    return {
        "query": half.ask.query(),
        "text": half.ask.text(),
        "run": half.ask.run.model_dump(mode="json"),
        "choice": {
            "gpu": ch.gpu,
            "gpus": ch.gpus,
            "fits": ch.fits,
            "pinned": ch.pinned,
            "summary": ch.summary,
            "option": ch.option.model_dump(mode="json") if ch.option else None,
        },
        "estimate": report.payload(half.planned.model, half.planned.estimate, half.planned.recommendation),
        "stack": dict(stack_versions()),
    }


def serving_payload(half: ServingHalf) -> dict[str, Any]:
    return {
        "query": half.ask.query(),
        "text": half.ask.text(),
        "estimate": serving_report.payload(half.model, half.estimate),
        "stack": serving_stack(half),
        "cost": half.cost.model_dump(mode="json") if half.cost else None,
        "tier_costs": {gpu: c.model_dump(mode="json") for gpu, c in half.tier_costs.items()},
    }


def row_payload(row: PurchaseRow) -> dict[str, Any]:
    return {
        "for": row.what,
        "gpus": row.gpus,
        "gpu": row.gpu,
        "price": row.price.model_dump(mode="json") if row.price else None,
        "cost": row.cost,
        "list_price": row.list_price.model_dump(mode="json") if row.list_price else None,
        "purchase_usd": row.purchase_usd,
    }


def cost_payload(proc: Procurement, buy: Purchase) -> dict[str, Any]:
    """Both halves' costs, two figures in their own units (never summed): the run's USD, serving's USD a month."""
    option = proc.train.choice.option if proc.train else None
    cost = proc.serve.cost if proc.serve else None
    return {
        "training_run_usd": option.cost_usd if option else None,
        "serving_per_hour_usd": cost.per_hour_usd if cost else None,
        "serving_per_month_usd": cost.per_month_usd if cost else None,
        "hours_per_month": HOURS_PER_MONTH,
        "serving_months": proc.serve_months,
        "serving_usd": cost.total_usd if cost else None,
        "line": buy.cost_line or None,
    }


def payload(proc: Procurement) -> dict[str, Any]:
    """The JSON of `GET /api/v1/report` and `gpuplan report --format json`."""
    buy = purchase(proc)
    return {
        "permalink": permalink(proc),
        "train": training_payload(proc.train) if proc.train else None,
        "serve": serving_payload(proc.serve) if proc.serve else None,
        "purchase": {
            "line": buy.line,
            "total_gpus": buy.total_gpus,
            "gpus": [row_payload(r) for r in buy.rows],
            "cost": cost_payload(proc, buy),
        },
    }


def training_markdown(half: TrainingHalf) -> list[str]:
    """The training half: headline, the options, every term with what backs it."""
    est, rec, model = half.planned.estimate, half.planned.recommendation, half.planned.model
    per_gpu = " per GPU" if est.plan.gpus > 1 else ""
    line, _ = training_line(half)
    out = [
        f"## Training: `{model.id}`",
        "",
        f"- Plan: {report.plan_line(est)}",
        f"- **Per GPU: {report.gib(est.device_bytes)}**{per_gpu} (peak allocated {report.gib(est.peak_allocated_bytes)}, "
        f"{est.peak_phase})",
        f"- **{line[0].upper() + line[1:]}**; {half.choice.summary}",
    ]
    if rec is not None and rec.time_model is not None:
        out.append(f"- Note: {report.time_model_text(rec)}")
    out += ["", "| term | GiB | backed by | note |", "|---|---:|---|---|"]
    out += [f"| {t.term} | {t.bytes / GIB:.3f} | {t.evidence} | {t.note} |" for t in est.breakdown if t.bytes]
    stack = ", ".join(f"{name} {version}" for name, version in stack_versions())
    return [*out, "", f"Stack modelled: {stack}."]


def serving_markdown(half: ServingHalf) -> list[str]:
    """The serving half: headline, sequences of the context per tier, every term with its source."""
    est, rec = half.estimate, half.estimate.recommendations
    per_gpu = " per GPU" if est.plan.tp > 1 else ""
    line, _ = serving_line(half)
    out = [
        f"## Serving: `{half.model.id}`",
        "",
        f"- Serving: {serving_report.plan_line(est)}",
        f"- **Per GPU: {report.gib(est.device_bytes)}**{per_gpu} (allocated {report.gib(est.peak_allocated_bytes)})",
        f"- **{line[0].upper() + line[1:]}**",
        *([f"- Cost: {serving_cost_line(half)}"] if half.cost else []),
        "",
        "| term | GiB | first-principles | source |",
        "|---|---:|---|---|",
    ]
    out += [
        f"| {t.term} | {t.bytes / GIB:.3f} | {'yes' if t.first_principles else ''} | {t.source} |"
        for t in est.breakdown
    ]
    if rec is not None:
        out += [
            "",
            f"| GPU | sequences of {est.plan.context:,} tokens on {est.plan.tp} | GPUs needed | on demand, 30-day month |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {f.gpu} | {f.max_concurrency or 0:,} | {f.gpus_needed or '-'} | {tier_month(half, f.gpu)} |"
            for f in rec.tiers
        ]
    if est.notes:
        out += ["", *(f"- {n}" for n in est.notes)]
    files = f"; at that tag: {', '.join(est.vllm_files)}" if est.vllm_files else ""
    return [*out, "", f"Stack modelled: {serving_stack(half)}{files}."]


def tier_month(half: ServingHalf, gpu: str) -> str:
    """A tier's on-demand 30-day month for the fewest GPUs of it that serve the load, or 'no dated price' (for the
    tier its row names)."""
    cost = half.tier_costs.get(gpu)
    if cost is None:
        return "-"
    return report.usd(cost.per_month_usd) if cost.per_month_usd is not None else "no dated price"  # the row's tier


def serving_cost_line(half: ServingHalf) -> str:
    """'1 x A100 40GB at $1.48/GPU-h on demand at Lambda (as of 2026-05-07) = $1.48/h, $1,066/month'."""
    cost = half.cost
    if cost is None:
        return ""
    if cost.price is None:
        return cost.unpriced
    return (
        f"{cost.gpus} x {cost.gpu} at {cost.price.label} = {serving_cost_text(cost)} (a month is {HOURS_PER_MONTH} h)"
    )


def purchase_markdown(buy: Purchase) -> list[str]:
    """The GPUs to buy or rent: each half's tier, its dated price, its cost, and its list price x count."""
    if not buy.rows:
        return []
    out = ["| for | GPUs | tier | on demand (as of) | cost | to buy (list price) |", "|---|---:|---|---|---|---|"]
    out += [f"| {r.what} | {r.gpus} | {r.gpu} | {r.price_text} | {r.cost} | {r.list_text} |" for r in buy.rows]
    out.append(f"| **in all** | **{buy.total_gpus}** | | | {buy.cost_line} | |")
    sources = [f"- {p.gpu}: {p.label}, {p.source}" for p in buy.prices]
    return [*out, "", "Prices, as each source stated them (quotes, not live rates):", "", *sources, ""]


def markdown(proc: Procurement) -> str:
    """The whole report for a purchase request: the purchase line and its GPUs first, then each half."""
    buy = purchase(proc)
    out = ["# GPU procurement report: training and serving", "", f"**Purchase: {buy.line}.**", ""]
    out += purchase_markdown(buy)
    if proc.train is not None:
        out += [*training_markdown(proc.train), ""]
    if proc.serve is not None:
        out += [*serving_markdown(proc.serve), ""]
    out.append(f"Permalink: `{permalink(proc)}`")
    return "\n".join(out) + "\n"
