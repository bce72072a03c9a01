"""The accuracy report: stored measurements against their estimates, as a table and summary (docs/accuracy.md)."""

from __future__ import annotations

from collections.abc import Sequence

from app.core.units import MIB
from app.store.models import AccuracyStats, MeasurementRecord

ACCURACY_TITLE = "gpuplan accuracy: estimates against measured training steps"


def _plan_cells(rec: MeasurementRecord) -> list[str]:
    p = rec.plan
    targets = p.get("targets", "")
    targets = targets if isinstance(targets, str) else ",".join(targets)
    return [
        str(p.get("method", "")),
        _checkpointing_cell(p),
        str(p.get("seq_len", "")),
        str(p.get("batch_size", "")),
        str(p.get("grad_accum_steps", 1)),
        str(p.get("rank", "")) if p.get("method") != "full" else "-",
        ("all-linear" if targets == "all-linear" else "attention") if p.get("method") != "full" else "-",
        str(p.get("dropout", "")) if p.get("method") != "full" else "-",
    ]


def _checkpointing_cell(p: dict[str, object]) -> str:
    """on / off, and the recipe's variant: reentrant, every n-th layer, offloaded to host memory."""
    if not p.get("gradient_checkpointing"):
        return "off"
    every = p.get("checkpoint_every", 1)
    variant = [*(["reentrant"] if p.get("reentrant") else []), *([f"every {every}"] if every != 1 else [])]
    variant += ["offload"] if p.get("checkpoint_offload") else []
    return ", ".join(variant) or "on"


def _stats_line(label: str, stats: AccuracyStats | None) -> str:
    if stats is None:
        return f"| {label} | 0 | - | - | - | - |"
    return (
        f"| {label} | {stats.count} | {stats.median_abs_error_pct:.2f} % | {stats.p90_abs_error_pct:.2f} % | "
        f"{stats.max_abs_error_pct:.2f} % | {stats.median_error_pct:+.2f} % |"
    )


def summary_table(records: Sequence[MeasurementRecord]) -> list[str]:
    """Median / p90 / max absolute error overall, per split (tune vs holdout) and per device."""
    lines = [
        "| points | n | median abs error | p90 abs error | max abs error | median signed error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines.append(_stats_line("all", AccuracyStats.from_errors([r.error_pct for r in records]) if records else None))
    for split in ("tune", "holdout"):
        errs = [r.error_pct for r in records if r.split == split]
        lines.append(
            _stats_line(
                f"{split} ({'in-sample' if split == 'tune' else 'out-of-sample'})",
                AccuracyStats.from_errors(errs) if errs else None,
            )
        )
    for device in sorted({r.device for r in records}):
        errs = [r.error_pct for r in records if r.device == device]
        lines.append(_stats_line(f"device {device}", AccuracyStats.from_errors(errs)))
    return lines


def accuracy_markdown(records: Sequence[MeasurementRecord], *, title: str, intro: str) -> str:
    """A Markdown page: the summary, then one row per measured point."""
    rows = sorted(records, key=lambda r: (r.device, r.model_id, r.model_type, r.error_pct))
    out = [
        f"# {title}",
        "",
        intro,
        "",
        "## Summary",
        "",
        *summary_table(rows),
        "",
        "## Points",
        "",
        "| model | type | device | split | method | ckpt | seq | batch | accum | rank | targets | dropout | layers | "
        "measured MiB | estimated MiB | error |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    multi = any(int(r.plan.get("gpus", 1)) > 1 for r in rows)
    if multi:  # the multi-rank table also says how the ranks were laid out and each rank's peak
        out[-2] = out[-2].replace("| layers |", "| gpus | sharding | rank peaks MiB | layers |")
        out[-1] = "|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|---|---|---:|---:|---:|---:|"
    for r in rows:
        ranks = _rank_cells(r) if multi else ""
        out.append(
            f"| {r.model_id} | {r.model_type} | {r.device} | {r.split or '-'} | "
            + " | ".join(_plan_cells(r))
            + f" | {ranks}{r.layers or '-'} | {r.measured_peak_bytes / MIB:,.2f} | {r.estimated_peak_bytes / MIB:,.2f} | "
            f"{r.error_pct:+.2f} % |"
        )
    return "\n".join(out) + "\n"


def _rank_cells(rec: MeasurementRecord) -> str:
    """gpus, sharding and every rank's peak (the measured peak is the worst of them); with offload the sharding says
    so and the worst rank's host RAM peak follows the device peaks (counted by placement)."""
    peaks = rec.env.get("rank_peak_bytes") or []
    shown = " / ".join(f"{p / MIB:,.2f}" for p in peaks) or "-"
    sharding = str(rec.plan.get("sharding", "none")) + (" + offload" if rec.plan.get("offload") else "")
    if rec.plan.get("fsdp_mixed_precision"):  # FSDP2 MixedPrecisionPolicy: gathered in dtype
        dtype = rec.plan.get("dtype", "bf16")
        sharding += f" + mp {dtype} (reduce {dtype if rec.plan.get('fsdp_reduce_dtype') == 'param' else 'fp32'})"
    sharding += " (FSDP1)" if rec.plan.get("fsdp_version") == 1 else ""
    if rec.plan.get("fsdp_units") == "accelerate" and rec.plan.get("fsdp_version", 2) == 2 and "fsdp" in sharding:
        sharding += " (accelerate units)"  # accelerate 1.14+'s embedding and tail units (app/core/fsdp2_units.py)
    if rec.env.get("host_peak_bytes") is not None:
        shown += f" (host {rec.env['host_peak_bytes'] / MIB:,.2f})"
    return f"{rec.plan.get('gpus', 1)} | {sharding} | {shown} | "
