"""One estimate as a JSON payload, a terminal table, Markdown and CSV (shared by the CLI, API and exports)."""

from __future__ import annotations

import csv
import io
from typing import Any

from pydantic_core import to_json, to_jsonable_python

from app.core.band import BandAnswer
from app.core.gpus import Option, Recommendation, TierFit
from app.core.result import Estimate
from app.core.spec import ModelSpec
from app.core.units import GIB
from app.core.verdict import left_text, verdict


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:,.2f} GiB"


def hours(value: float | None, days: bool = True) -> str:
    """Wall-clock time of a run: minutes under an hour, else hours (and days past two)."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 60:.0f} min"
    return f"{value:,.1f} h" + (f" ({value / 24:,.1f} days)" if days and value >= 48 else "")


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value < 1000 else f"${value:,.0f}"


def option_text(o: Option) -> str:
    """'1 x H100 80GB: 3.8 h, $13.09 at $3.49/GPU-h on demand at RunPod (as of 2026-05-18)'."""
    head = f"{o.gpus} x {o.gpu}: {hours(o.hours)}"
    if o.price is None or o.cost_usd is None:
        return head + ", no on-demand price listed" + (f" ({o.list_price.label})" if o.list_price else "")
    return f"{head}, {usd(o.cost_usd)} at {o.price.label}"


def time_model_text(rec: Recommendation) -> str:
    """What every time and cost assumes, said once."""
    tm = rec.time_model
    if tm is None:
        return ""
    epochs = f" x {tm.epochs:g} epochs" if tm.epochs != 1 else ""
    return (
        f"time and cost are {tm.label}: {tm.train_tokens:,} training tokens{epochs}, each GPU at {tm.mfu:.0%} MFU of "
        f"its dense 16-bit peak, with memory-bandwidth and interconnect floors; prices: {tm.prices}, each as of the "
        "date shown"
    )


def tier_note(f: TierFit) -> str:
    """Why a tier cannot run the plan and what would make it run, else the price its cost uses."""
    if f.cannot_run:
        if not f.runs_with:
            return f.cannot_run
        change = ", ".join(f"{k}={v}" for k, v in f.runs_with.items())
        return f"{f.cannot_run}; with {change} it {'fits' if f.runs_with_fits else 'runs but does not fit'}"
    if f.option is None:
        return f.reason or ""
    if f.option.price is None:
        return "no on-demand price listed"
    return f.option.price.label


def band_text(answer: BandAnswer) -> str:
    """'likely 11.9–12.6 GiB (5th-95th percentile of 48 comparable runs, CPU reference tracker)', or why none."""
    b = answer.band
    if b is None:
        return f"no uncertainty band: {answer.reason}"
    return (
        f"likely {b.low_bytes / GIB:,.2f}–{b.high_bytes / GIB:,.2f} GiB ({b.method} of {b.runs} comparable runs, "
        f"{b.source_label}; covers about {b.coverage:.0%} of such runs)"
    )


def payload(
    model: ModelSpec, est: Estimate, rec: Recommendation | None, band: BandAnswer | None = None
) -> dict[str, Any]:
    """The JSON object of `gpuplan estimate --json` and `GET /api/v1/estimate`."""
    parsed: dict[str, Any] = to_jsonable_python(_payload(model, est, rec, band))
    return parsed


def payload_json(model: ModelSpec, est: Estimate, rec: Recommendation | None, band: BandAnswer | None = None) -> str:
    """payload() as compact JSON text, serialised by pydantic-core in one pass (the same JSON as json.dumps of
    payload(), non-ASCII written as UTF-8 rather than \\u escapes; about 5× faster: the API's hot path)."""
    return to_json(_payload(model, est, rec, band)).decode()


def _payload(model: ModelSpec, est: Estimate, rec: Recommendation | None, band: BandAnswer | None) -> dict[str, Any]:
    found = verdict(model, est, rec)
    return {
        "model": {
            "id": model.id,
            "source": model.source,
            "revision": model.revision,
            "architecture": model.arch.architecture,
            "model_type": model.arch.model_type,
            "num_params": model.num_params,
        },
        "plan": est.plan,
        "params": est.params,
        "breakdown": list(est.breakdown),
        "phases": list(est.phases),
        "peak_phase": est.peak_phase,
        "peak_allocated_bytes": est.peak_allocated_bytes,
        "peak_reserved_bytes": est.peak_reserved_bytes,
        "device_bytes": est.device_bytes,
        "double_quant_saving_bytes": est.double_quant_saving_bytes,
        "offloaded_bytes": est.offloaded_bytes,
        "notes": list(est.notes),
        "adjustments": list(est.adjustments),
        "recommendations": rec,
        "verdict": found,
        "uncertainty": band,
        "safe_answer": rec is not None and rec.safety_factor > 1.0,
    }


def adjustment_lines(est: Estimate) -> list[str]:
    """One line per setting changed to the nearest plan the stack accepts: what, from, to, and why."""
    return [
        f"changed {a.field}: {_value(a.requested)} -> {_value(a.used)} (the stack refuses the requested value: "
        f"{a.why}; add --strict to be refused instead)"
        for a in est.adjustments
    ]


def _value(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def plan_line(est: Estimate) -> str:
    p = est.plan
    what = (
        f"{p.method} ({p.quant}{', double quant' if p.quant in ('nf4', 'fp4') and p.double_quant else ''})"
        if p.method == "qlora"
        else p.method
    )
    lora = (
        f", r={p.rank} on {p.targets if isinstance(p.targets, str) else ','.join(p.targets)}"
        if p.method != "full"
        else ""
    )
    ckpt = f"checkpointing {p.checkpointing}" if p.gradient_checkpointing else "no checkpointing"
    sharding = f", {p.sharding}" if p.sharding != "none" else ""
    if p.fsdp_mixed_precision:  # FSDP2 MixedPrecisionPolicy: fp32 shards gathered in the plan dtype
        reduce = p.dtype if p.fsdp_reduce_dtype == "param" else p.fsdp_reduce_dtype
        sharding += f" (MixedPrecisionPolicy: fp32 shards, {p.dtype} gathers, reduce {reduce})"
    return (
        f"{what}{lora}, {p.dtype}, seq {p.seq_len} x batch {p.batch_size}, {ckpt}, {p.optimizer}, {p.attn}, "
        f"{p.gpus} GPU{'s' if p.gpus > 1 else ''}{sharding}{' (FSDP1)' if p.fsdp_version == 1 else ''}, {p.device}, {p.stack}"
        + (", trl SFTTrainer" if p.loop == "sft" else "")
    )


def table(model: ModelSpec, est: Estimate, rec: Recommendation | None, band: BandAnswer | None = None) -> str:
    """The human-readable output of `gpuplan estimate`."""
    lines = [
        f"{model.id}{'@' + model.revision[:12] if model.revision else ''}  ({model.arch.architecture}, {model.num_params:,} parameters)",
        f"plan: {plan_line(est)}",
        *adjustment_lines(est),
        f"trainable: {est.params.trainable:,} ({est.params.trainable_pct:.4f} %)",
        "",
        f"{'term':<30} {'bytes':>16} {'GiB':>9}  note",
    ]
    for t in est.breakdown:
        flag = {"allocated": "", "reserved": " [reserved]", "device": " [outside allocator]"}[t.counted]
        lines.append(f"{t.term:<30} {t.bytes:>16,} {t.bytes / GIB:>9.3f}  {t.note}{flag}")
    lines += [
        "",
        f"peak allocated ({est.peak_phase}): {est.peak_allocated_bytes:>16,}  {gib(est.peak_allocated_bytes)}",
        f"peak reserved:            {est.peak_reserved_bytes:>16,}  {gib(est.peak_reserved_bytes)}",
        f"device (nvidia-smi):      {est.device_bytes:>16,}  {gib(est.device_bytes)}"
        + (" per GPU" if est.plan.gpus > 1 else ""),
    ]
    if est.double_quant_saving_bytes is not None:
        lines.append(
            f"double quant saves:       {est.double_quant_saving_bytes:>16,}  {gib(est.double_quant_saving_bytes)}"
        )
    lines += [f"note: {n}" for n in est.notes]
    if band is not None:
        lines.append(band_text(band))
    found = verdict(model, est, rec)
    if rec is not None and found is not None:
        lines += ["", f"verdict: {found.label.upper()}: {found.text}", *recommendation_lines(rec)]
    return "\n".join(lines)


def recommendation_lines(rec: Recommendation) -> list[str]:
    """The CLI's recommendation: the cheapest option, the fastest, what they assume, and every tier."""
    best = rec.options[0] if rec.options else None
    if best is None:
        lines = ["recommended: none: no GPU count of any tier within the limits holds and runs this plan"]
    else:
        safe = f"; judged on the band's upper end, x{rec.safety_factor:.3f}" if rec.safety_factor > 1 else ""
        lines = [f"recommended: {option_text(best)} (keeping {rec.headroom:.0%} headroom{safe})"]
        if rec.fastest is not None and rec.fastest != best:
            lines.append(f"fastest:     {option_text(rec.fastest)}")
        lines += [f"ranking: {rec.ranking}", time_model_text(rec)]
        lines += [f"time check: {c.text}" for c in rec.quoted_time_checks]
        lines.append("options, cheapest run first:")
        lines += [f"  {i}. {option_text(o)}" for i, o in enumerate(rec.options[:5], 1)]
    lines.append(
        f"{'gpu':<18} {'usable':>10} {'fits':>12} {'headroom left':>36} {'gpus needed':>12} {'time':>10} "
        f"{'cost':>10}  note"
    )
    for f in rec.tiers:
        o = f.option
        lines.append(
            f"{f.gpu:<18} {f.usable_bytes / GIB:>7.1f} GiB {fits_word(f):>12} "
            f"{left_text(f, rec.headroom):>36} {f.gpus_needed if f.gpus_needed else '-':>12} "
            f"{hours(o.hours, days=False) if o else '-':>10} {usd(o.cost_usd) if o else '-':>10}  {tier_note(f)}"
        )
    return lines


def fits_word(f: TierFit) -> str:
    """yes / tight / no: the tier's state on plan.gpus GPUs."""
    return {"fits": "yes", "tight": "tight", "does_not_fit": "no"}[f.state]


def markdown(model: ModelSpec, est: Estimate, rec: Recommendation | None, band: BandAnswer | None = None) -> str:
    """A Markdown report for procurement documents: it names the model, the plan and the GPU count it is for."""
    found = verdict(model, est, rec)
    gpus = f"{est.plan.gpus} GPU{'s' if est.plan.gpus > 1 else ''}"
    out = [
        f"# GPU memory plan: {model.id} on {gpus}",
        "",
        f"- Model: `{model.id}`{' @ `' + model.revision + '`' if model.revision else ''} ({model.arch.architecture}, {model.num_params:,} parameters)",
        f"- Plan: {plan_line(est)}",
        f"- GPUs planned: {est.plan.gpus} (sharding {est.plan.sharding}); every byte figure is per GPU",
        *([f"- **Verdict: {found.label}.** {found.text}"] if found is not None else []),
        *([f"- Uncertainty: {band_text(band)}"] if band is not None else []),
        *(
            [f"- Safe answer: judged on the band's upper end (every per-GPU estimate x {rec.safety_factor:.3f})"]
            if rec is not None and rec.safety_factor > 1
            else []
        ),
        *(f"- **{line}**" for line in adjustment_lines(est)),
        f"- Trainable parameters: {est.params.trainable:,}",
        f"- **Peak allocated: {gib(est.peak_allocated_bytes)}**; reserved {gib(est.peak_reserved_bytes)}; device {gib(est.device_bytes)}",
    ]
    if rec is not None and rec.options:
        best = rec.options[0]
        out.append(f"- **Recommended: {option_text(best)}** ({rec.headroom:.0%} headroom kept free; {rec.ranking})")
        if rec.fastest is not None and rec.fastest != best:
            out.append(f"- Fastest: {option_text(rec.fastest)}")
        out.append(f"- Note: {time_model_text(rec)}")
        out += [f"- Time check: {c.text}" + (f" ({c.scope})" if c.scope else "") for c in rec.quoted_time_checks]
    out += ["", "| term | bytes | GiB | note |", "|---|---:|---:|---|"]
    out += [f"| {t.term} | {t.bytes:,} | {t.bytes / GIB:.3f} | {t.note} |" for t in est.breakdown]
    if rec is not None:
        out += markdown_recommendation(rec)
    return "\n".join(out) + "\n"


def markdown_recommendation(rec: Recommendation) -> list[str]:
    """The options ranked by the cost of the run (each price with its date), then every tier."""
    out = ["", "## Options, cheapest run first", ""]
    out += ["| # | option | time | GPU-hours | tokens/s | cost | price (as of) |", "|---:|---|---:|---:|---:|---:|---|"]
    for i, o in enumerate(rec.options, 1):
        price = o.price.label if o.price else "no on-demand price listed"
        rate = f"{o.tokens_per_s:,.0f}" if o.tokens_per_s else "-"
        gpu_hours = f"{o.gpu_hours:,.1f}" if o.gpu_hours is not None else "-"
        out.append(
            f"| {i} | {o.gpus} x {o.gpu} | {hours(o.hours)} | {gpu_hours} | {rate} | {usd(o.cost_usd)} | {price} |"
        )
    out += ["", "## GPU tiers", "", "| GPU | usable GiB | fits | headroom left | GPUs needed | time | cost | note |"]
    out.append("|---|---:|---|---|---:|---:|---:|---|")
    for f in rec.tiers:
        out.append(
            f"| {f.gpu} | {f.usable_bytes / GIB:.1f} | {fits_word(f)} | {left_text(f, rec.headroom)} | "
            f"{f.gpus_needed or '-'} | "
            f"{hours(f.option.hours) if f.option else '-'} | {usd(f.option.cost_usd) if f.option else '-'} | "
            f"{tier_note(f)} |"
        )
    return out


def csv_text(est: Estimate) -> str:
    """The breakdown as CSV: term, bytes, category, counted, note."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["term", "bytes", "category", "counted", "note"])
    for t in est.breakdown:
        writer.writerow([t.term, t.bytes, t.category, t.counted, t.note])
    writer.writerow(["peak_allocated_bytes", est.peak_allocated_bytes, "total", "allocated", ""])
    writer.writerow(["peak_reserved_bytes", est.peak_reserved_bytes, "total", "reserved", ""])
    writer.writerow(["device_bytes", est.device_bytes, "total", "device", ""])
    return buf.getvalue()
