"""A comparison as JSON, a terminal table and Markdown (each plan's own export is app/exports/report.py's)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from app.compare.compare import Column, Comparison
from app.core.units import GIB
from app.exports import report

COMPARE_PATH = "/compare"


def permalink(comparison: Comparison) -> str:
    """The comparison page's URL: one `plan=` per plan (each a query string of its own), then the run size."""
    return f"{COMPARE_PATH}?{urlencode(comparison.query())}"


def _cost(c: Column) -> str:
    o = c.choice.option
    if o is None:
        return "-"
    if o.cost_usd is None or o.price is None:
        return f"{report.hours(o.hours)}, no on-demand price listed"
    return f"{report.hours(o.hours)}, {report.usd(o.cost_usd)} at {o.price.label}"


def _gpus(c: Column) -> str:
    ch = c.choice
    if ch.gpu is None:
        return "-"
    return f"{ch.gpus} x {ch.gpu}" if ch.gpus else ch.gpu


def column_payload(c: Column) -> dict[str, Any]:
    """One plan: how it was asked (`query`, `gpu`), the GPUs it is judged on, and its whole estimate payload."""
    ch, est = c.choice, c.planned.estimate
    return {
        "number": c.number,
        "label": c.label,
        "query": c.entry.query(),
        "gpu": c.entry.gpu,
        "device_bytes": est.device_bytes,
        "peak_allocated_bytes": est.peak_allocated_bytes,
        "peak_reserved_bytes": est.peak_reserved_bytes,
        "per_gpu": est.plan.gpus > 1,
        "choice": {
            "gpu": ch.gpu,
            "gpus": ch.gpus,
            "fits": ch.fits,
            "pinned": ch.pinned,
            "budget_bytes": ch.budget_bytes,
            "summary": ch.summary,
            "option": ch.option.model_dump(mode="json") if ch.option else None,
        },
        "estimate": report.payload(c.planned.model, est, c.planned.recommendation),
    }


def payload(comparison: Comparison) -> dict[str, Any]:
    """The JSON of `GET|POST /api/v1/compare` and `gpuplan compare --json`."""
    cheapest = comparison.cheapest
    return {
        "permalink": permalink(comparison),
        "scale_bytes": comparison.scale_bytes,
        "run": comparison.run.model_dump(mode="json"),
        "cheapest": cheapest.number if cheapest else None,
        "plans": [column_payload(c) for c in comparison.columns],
    }


def headline(c: Column) -> str:
    """'1. org/name: qlora (nf4), 1 GPU: 12.82 GiB -> fits on 1 x RTX 4090 (...); 2.8 h, $4.19 at ...'."""
    per_gpu = " per GPU" if c.planned.estimate.plan.gpus > 1 else ""
    return f"{c.label}: {report.gib(c.planned.estimate.device_bytes)}{per_gpu} -> {c.choice.summary}; {_cost(c)}"


def table(comparison: Comparison) -> str:
    """The terminal output of `gpuplan compare`: one headline per plan, then the terms side by side in GiB."""
    lines = [headline(c) for c in comparison.columns]
    cheapest = comparison.cheapest
    if cheapest is not None:
        lines.append(f"cheapest run: plan {cheapest.number} ({_gpus(cheapest)})")
    lines += ["", _row("term (GiB)", [f"plan {c.number}" for c in comparison.columns])]
    for term in terms(comparison):
        lines.append(_row(term, [_term_gib(c, term) for c in comparison.columns]))
    lines.append(_row("device", [f"{c.planned.estimate.device_bytes / GIB:.2f}" for c in comparison.columns]))
    lines.append(_row("on GPUs", [_gpus(c) for c in comparison.columns]))
    first = comparison.columns[0].planned.recommendation
    if first is not None:
        lines += ["", report.time_model_text(first)]
    lines.append(f"permalink: {permalink(comparison)}")
    return "\n".join(lines)


def _row(name: str, cells: list[str]) -> str:
    return f"{name:<30}" + "".join(f" {cell:>18}" for cell in cells)


def terms(comparison: Comparison) -> list[str]:
    """Every term any plan has bytes in, in the order they first appear (the chart's legend order)."""
    seen: dict[str, None] = {}
    for c in comparison.columns:
        seen.update((t.term, None) for t in c.planned.estimate.breakdown if t.bytes > 0)
    return list(seen)


def _term_gib(c: Column, term: str) -> str:
    found = c.planned.estimate.term(term)
    return f"{found.bytes / GIB:.3f}" if found is not None and found.bytes else "-"


def markdown(comparison: Comparison) -> str:
    """The comparison for a purchase request: a headline row per plan, then the terms side by side."""
    cols = comparison.columns
    out = ["# GPU memory plans compared", ""]
    out += ["| # | model | plan | device | on GPUs | fits | time and cost |", "|---:|---|---|---:|---|---|---|"]
    for c in cols:
        est = c.planned.estimate
        per_gpu = " per GPU" if est.plan.gpus > 1 else ""
        out.append(
            f"| {c.number} | `{c.planned.model.id}` | {report.plan_line(est)} | {report.gib(est.device_bytes)}{per_gpu} "
            f"| {_gpus(c)} | {c.choice.summary} | {_cost(c)} |"
        )
    cheapest = comparison.cheapest
    if cheapest is not None:
        out += ["", f"**Cheapest run: plan {cheapest.number}** ({_gpus(cheapest)}, {_cost(cheapest)})."]
    first = cols[0].planned.recommendation
    if first is not None:
        out += ["", f"Note: {report.time_model_text(first)}"]
    out += ["", "## Breakdown (GiB per GPU)", ""]
    out.append("| term | " + " | ".join(f"plan {c.number}" for c in cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    for term in terms(comparison):
        out.append(f"| {term} | " + " | ".join(_term_gib(c, term) for c in cols) + " |")
    out.append("| **device** | " + " | ".join(f"**{c.planned.estimate.device_bytes / GIB:.3f}**" for c in cols) + " |")
    out += ["", f"Permalink: `{permalink(comparison)}`"]
    return "\n".join(out) + "\n"
