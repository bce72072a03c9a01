"""One serving estimate as a JSON payload, a terminal table, Markdown and CSV (the CLI, the API and the page)."""

from __future__ import annotations

import csv
import io
from typing import Any

from app.core.spec import ModelSpec
from app.core.units import GIB
from app.serving.result import ServingEstimate, ServingTierFit

FP = " [first-principles]"


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:,.2f} GiB"


def payload(model: ModelSpec, est: ServingEstimate) -> dict[str, Any]:
    """The JSON object of `gpuplan inference --json` and `GET /api/v1/inference`."""
    body = est.model_dump(mode="json")
    body["model"] = {
        "id": model.id,
        "source": model.source,
        "revision": model.revision,
        "architecture": model.arch.architecture,
        "model_type": model.arch.model_type,
        "num_params": model.num_params,
    }
    return body


def plan_line(est: ServingEstimate) -> str:
    p = est.plan
    adapters = f", {p.adapters} unmerged LoRA x r={p.adapter_rank}" if p.adapters else ", adapters merged (or none)"
    line = (
        f"{p.engine}, weights {p.weights}{adapters}, {p.concurrency} x {p.context:,} tokens "
        f"({p.output_tokens:,} generated), KV {p.kv_dtype}, tp={p.tp}"
    )
    if p.vllm:
        line += (
            f", gpu_memory_utilization {p.gpu_memory_utilization:g}, max_num_batched_tokens "
            f"{p.max_num_batched_tokens:,}, max_num_seqs {p.max_num_seqs}, block {p.block_size}"
            + (", eager" if p.enforce_eager else "")
        )
    return line + f", {p.device}"


def totals_lines(est: ServingEstimate) -> list[str]:
    per = " per GPU" if est.plan.tp > 1 else ""
    return [
        f"peak allocated ({est.moment}): {est.peak_allocated_bytes:>16,}  {gib(est.peak_allocated_bytes)}{per}",
        f"device (nvidia-smi):      {est.device_bytes:>16,}  {gib(est.device_bytes)}{per}",
        f"KV per token (all layers): {est.kv_bytes_per_token:>15,} B{per}",
    ]


def _tier_row(f: ServingTierFit) -> str:
    pool = f"{f.kv_pool_bytes / GIB:>8.1f}" if f.kv_pool_bytes is not None else f"{'-':>8}"
    cap = f"{f.kv_capacity_tokens:>12,}" if f.kv_capacity_tokens is not None else f"{'-':>12}"
    return (
        f"{f.gpu:<18} {f.usable_bytes / GIB:>7.1f} GiB {'yes' if f.fits else 'no':>5} {pool} {cap} "
        f"{f.max_concurrency if f.max_concurrency is not None else '-':>8} {f.gpus_needed or '-':>6}"
    )


def recommendation_lines(est: ServingEstimate) -> list[str]:
    rec = est.recommendations
    if rec is None:
        return []
    if rec.recommended:
        head = f"recommended: {rec.recommended_gpus} x {rec.recommended}"
    else:
        head = "recommended: no GPU tier serves this load; try fp8/nf4 weights, fp8 KV, a shorter context or more tp"
    lines = [
        "",
        head,
        f"{'gpu':<18} {'usable':>11} {'fits':>5} {'pool GiB':>8} {'KV tokens':>12} {'max seqs':>8} {'gpus':>6}",
    ]
    return lines + [_tier_row(f) for f in rec.tiers]


def table(model: ModelSpec, est: ServingEstimate) -> str:
    """The human-readable output of `gpuplan inference`."""
    lines = [
        f"{model.id}{'@' + model.revision[:12] if model.revision else ''}  ({model.arch.architecture}, "
        f"{model.num_params:,} parameters)",
        f"serving: {plan_line(est)}",
    ]
    if est.vllm_version:
        lines.append(f"modelled: {est.vllm_version}")
    lines += ["", f"{'term':<24} {'bytes':>16} {'GiB':>9}  note"]
    for t in est.breakdown:
        flag = {"allocated": "", "reserved": " [reserved]", "device": " [outside allocator]"}[t.counted]
        lines.append(
            f"{t.term:<24} {t.bytes:>16,} {t.bytes / GIB:>9.3f}  {t.note}{flag}{FP if t.first_principles else ''}"
        )
    lines += ["", *totals_lines(est), *(f"note: {n}" for n in est.notes)]
    if est.stretch is not None:
        s = est.stretch
        lines.append(
            f"on {s.tp} x {s.gpu}: at most {s.max_concurrency:,} sequences of {est.plan.context:,} tokens, "
            f"or {est.plan.concurrency} of up to {s.max_context:,} tokens"
        )
    return "\n".join(lines + recommendation_lines(est))


def markdown(model: ModelSpec, est: ServingEstimate) -> str:
    """A Markdown report of the serving plan, for procurement documents."""
    out = [
        f"# GPU serving plan: {model.id}",
        "",
        f"- Model: `{model.id}` ({model.arch.architecture}, {model.num_params:,} parameters)",
        f"- Serving: {plan_line(est)}",
        *([f"- Modelled: {est.vllm_version}; files: {', '.join(est.vllm_files)}"] if est.vllm_version else []),
        f"- **Per GPU: {gib(est.device_bytes)}** (allocated {gib(est.peak_allocated_bytes)}, {est.moment})",
    ]
    rec = est.recommendations
    if rec is not None and rec.recommended:
        out.append(f"- **Recommended: {rec.recommended_gpus} x {rec.recommended}**")
    out += ["", "| term | bytes | GiB | first-principles | note |", "|---|---:|---:|---|---|"]
    out += [
        f"| {t.term} | {t.bytes:,} | {t.bytes / GIB:.3f} | {'yes' if t.first_principles else ''} | {t.note} |"
        for t in est.breakdown
    ]
    if rec is not None:
        out += [
            "",
            "| GPU | usable GiB | fits | KV pool GiB | max sequences | GPUs needed |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for f in rec.tiers:
            pool = f"{f.kv_pool_bytes / GIB:.1f}" if f.kv_pool_bytes is not None else "-"
            out.append(
                f"| {f.gpu} | {f.usable_bytes / GIB:.1f} | {'yes' if f.fits else 'no'} | {pool} | "
                f"{f.max_concurrency if f.max_concurrency is not None else '-'} | {f.gpus_needed or '-'} |"
            )
    return "\n".join(out + [""] + [f"- {n}" for n in est.notes]) + "\n"


def csv_text(est: ServingEstimate) -> str:
    """The breakdown as CSV: term, bytes, category, counted, first_principles, note."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["term", "bytes", "category", "counted", "first_principles", "note"])
    for t in est.breakdown:
        writer.writerow([t.term, t.bytes, t.category, t.counted, "yes" if t.first_principles else "", t.note])
    writer.writerow(["peak_allocated_bytes", est.peak_allocated_bytes, "total", "allocated", "", ""])
    writer.writerow(["device_bytes", est.device_bytes, "total", "device", "", ""])
    return buf.getvalue()
