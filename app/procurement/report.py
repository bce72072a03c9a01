"""The procurement report as JSON and Markdown (the page and its PDF render the same facts from report.html).

Each half: its headline (per-GPU GiB, the GPUs and their count; the run's time and cost for training, sequences of
the context per tier for serving), its breakdown terms with what backs them, the stack modelled; then one purchase
line for both (training on 1 x H100 80GB for 3.8 h ~ $13.09; serving on 2 x L40S; 3 GPUs in all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from app.core.units import GIB
from app.exports import report
from app.exports.stack import stack_versions
from app.procurement.build import Procurement, ServingHalf, TrainingHalf
from app.serving import report as serving_report
from app.serving.hf import TRANSFORMERS_SEMANTICS

REPORT_PATH = "/report"


def permalink(proc: Procurement) -> str:
    return f"{REPORT_PATH}?{urlencode(proc.query())}"


@dataclass(frozen=True)
class Purchase:
    """The GPUs both halves need: (purpose, count, tier) rows, the total, and the line that says it."""

    rows: tuple[tuple[str, int, str], ...]
    line: str

    @property
    def total_gpus(self) -> int:
        return sum(n for _, n, _ in self.rows)


def training_line(half: TrainingHalf) -> tuple[str, tuple[str, int, str] | None]:
    """'training on 1 x H100 80GB for 3.8 h ~ $13.09' (the run's time and on-demand cost), or why none."""
    ch, o = half.choice, half.choice.option
    if ch.gpu is None or not ch.gpus:
        return f"training: {ch.summary}", None
    line = f"training on {ch.gpus} x {ch.gpu}"
    if o is not None:
        line += f" for {report.hours(o.hours)}"
        line += f" ~ {report.usd(o.cost_usd)} on demand" if o.cost_usd is not None else " (no on-demand price listed)"
    return line, ("training", ch.gpus, ch.gpu)


def serving_line(half: ServingHalf) -> tuple[str, tuple[str, int, str] | None]:
    """'serving on 2 x L40S (16 x 8,192 tokens)', or why no tier serves the load."""
    est, rec = half.estimate, half.estimate.recommendations
    load = f"{est.plan.concurrency} x {est.plan.context:,} tokens on {est.plan.engine}"
    if rec is None:
        return f"serving: CPU reference plan, no GPU recommendation ({load})", None
    if not rec.recommended or not rec.recommended_gpus:
        return f"serving: no GPU tier serves {load}", None
    return f"serving on {rec.recommended_gpus} x {rec.recommended} ({load})", (
        "serving",
        rec.recommended_gpus,
        rec.recommended,
    )


def purchase(proc: Procurement) -> Purchase:
    """Both halves' GPUs in one line, and the total to buy (or rent)."""
    said = [training_line(proc.train)] if proc.train else []
    said += [serving_line(proc.serve)] if proc.serve else []
    parts = [line for line, _ in said]
    rows = [row for _, row in said if row is not None]
    total = sum(n for _, n, _ in rows)
    if rows:
        tiers = {gpu for _, _, gpu in rows}
        per_tier = f"{total} x {rows[0][2]}" if len(tiers) == 1 else " + ".join(f"{n} x {g}" for _, n, g in rows)
        parts.append(f"{total} GPU{'s' if total != 1 else ''} in all ({per_tier})")
    return Purchase(rows=tuple(rows), line="; ".join(parts))


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
            "gpus": [{"for": what, "gpus": n, "gpu": gpu} for what, n, gpu in buy.rows],
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
            f"| GPU | sequences of {est.plan.context:,} tokens on {est.plan.tp} | GPUs needed |",
            "|---|---:|---:|",
        ]
        out += [f"| {f.gpu} | {f.max_concurrency or 0:,} | {f.gpus_needed or '-'} |" for f in rec.tiers]
    if est.notes:
        out += ["", *(f"- {n}" for n in est.notes)]
    files = f"; at that tag: {', '.join(est.vllm_files)}" if est.vllm_files else ""
    return [*out, "", f"Stack modelled: {serving_stack(half)}{files}."]


def markdown(proc: Procurement) -> str:
    """The whole report for a purchase request: the purchase line first, then each half."""
    out = ["# GPU procurement report: training and serving", "", f"**Purchase: {purchase(proc).line}.**", ""]
    if proc.train is not None:
        out += [*training_markdown(proc.train), ""]
    if proc.serve is not None:
        out += [*serving_markdown(proc.serve), ""]
    out.append(f"Permalink: `{permalink(proc)}`")
    return "\n".join(out) + "\n"
