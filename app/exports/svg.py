"""Server-rendered SVG charts: the estimate's breakdown as a stacked bar, and estimated vs measured peaks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from app.core.gpus import Recommendation, budget_bytes, find_tier
from app.core.result import Estimate, Term
from app.core.units import GIB
from app.exports.report import plan_line

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
# Colour-blind-friendly colours (Okabe–Ito, then Tableau), one fixed colour per breakdown term: a term keeps its
# colour whichever terms a plan has and in whatever order they come.
TERM_COLOURS: dict[str, str] = {
    "base_weight_bytes": "#0072B2",
    "lora_adapter_bytes": "#E69F00",
    "gradient_bytes": "#009E73",
    "master_weight_bytes": "#CC79A7",
    "optimizer_state_bytes": "#56B4E9",
    "activation_bytes": "#D55E00",
    "logits_peak_bytes": "#F0E442",
    "layer_transient_bytes": "#4E79A7",
    "dequant_transient_bytes": "#B07AA1",
    "optimizer_temp_bytes": "#76B7B2",
    "allgather_buffer_bytes": "#EDC948",
    "ddp_bucket_bytes": "#59A14F",
    "cublas_workspace_bytes": "#FF9DA7",
    "allocator_cache_bytes": "#7F7F7F",
    "cuda_context_bytes": "#BAB0AC",
    "paged_optimizer_state_bytes": "#9C755F",
}
OTHER_TERM = "#3D3D3D"  # a term not listed above (none today)
PALETTE = tuple(TERM_COLOURS.values())
NICE_STEPS = (1.0, 2.0, 2.5, 5.0)
MAX_TICKS = 5  # intervals on the axis, at most


def _text(value: str) -> str:
    return escape(value)


def _open(width: int, height: int, label: str, standalone: bool) -> list[str]:
    head = ['<?xml version="1.0" encoding="UTF-8"?>'] if standalone else []
    head.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label={quoteattr(label)} font-family="{FONT}" font-size="12">'
    )
    head.append(f"<title>{_text(label)}</title>")
    head.append(f'<rect width="{width}" height="{height}" fill="#ffffff"/>')
    return head


def term_colour(term: str) -> str:
    """The term's fixed colour (TERM_COLOURS)."""
    return TERM_COLOURS.get(term, OTHER_TERM)


def term_colours(est: Estimate) -> dict[str, str]:
    """The colour of each non-zero term in the chart (the page's table uses them as its legend)."""
    return {t.term: term_colour(t.term) for t in est.breakdown if t.bytes > 0}


def nice_step(span: float, max_ticks: int = MAX_TICKS) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k that covers `span` in at most `max_ticks` intervals (round axis ticks)."""
    if span <= 0:
        return 1.0
    raw = span / max_ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next((f * power for f in NICE_STEPS if f * power >= raw * (1 - 1e-12)), 10 * power)


@dataclass(frozen=True)
class _Bar:
    """The breakdown chart's geometry: a horizontal bar from `left` spanning `span` pixels for `scale_max` bytes."""

    width: int
    left: int
    span: int
    top: int
    height: int
    scale_max: float
    step: float  # bytes between ticks

    def x(self, nbytes: float) -> float:
        return self.left + self.span * nbytes / self.scale_max

    @property
    def axis_y(self) -> int:
        return self.top + self.height + 16


def _scale(largest: int) -> tuple[float, float]:
    """(scale max, tick step) in bytes: the axis ends at the first round GiB tick at or past `largest`."""
    step = nice_step(largest / GIB) * GIB
    return max(math.ceil(largest / step - 1e-9), 1) * step, step


def _header(est: Estimate, narrow: bool) -> list[tuple[str, str]]:
    """The chart's title lines (size, text): what it is for — model, plan, GPU count — and the three totals."""
    p = est.plan
    per_gpu = " per GPU" if p.gpus > 1 else ""
    on = f"on {p.gpus} GPU{'s' if p.gpus > 1 else ''}" + (f" ({p.sharding})" if p.sharding != "none" else "")
    totals = [
        f"peak allocated {est.peak_allocated_bytes / GIB:.2f} GiB",
        f"reserved {est.peak_reserved_bytes / GIB:.2f} GiB",
        f"device {est.device_bytes / GIB:.2f} GiB ({est.peak_phase} phase)",
    ]
    lines = [("title", f"{est.model}"), ("title", f"{est.device_bytes / GIB:.2f} GiB{per_gpu} {on}")]
    if not narrow:
        lines = [("title", f"{est.model}: {est.device_bytes / GIB:.2f} GiB{per_gpu} {on}")]
    words = plan_line(est)
    plan = _wrap(f"plan: {words}", 58 if narrow else 118)
    lines += [("plan", line) for line in plan]
    lines += [("sub", t) for t in totals] if narrow else [("sub", " · ".join(totals))]
    return lines


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def breakdown_chart(
    est: Estimate, rec: Recommendation | None = None, *, standalone: bool = False, narrow: bool = False
) -> str:
    """A stacked bar of the breakdown terms (device bytes per GPU), the recommended GPU's budget, and a legend;
    titled with the model, the plan and the GPU count. `narrow`: a 360 px layout for phones."""
    width, left, right = (360, 10, 10) if narrow else (760, 16, 16)
    terms = [t for t in est.breakdown if t.bytes > 0]
    budget = _budget(rec)
    header = _header(est, narrow)
    top = 22 + 17 * len(header)
    scale_max, step = _scale(max([est.device_bytes, budget[1] if budget else 0, 1]))
    bar = _Bar(width, left, width - left - right, top, 34, scale_max, step)
    per_gpu = " per GPU" if est.plan.gpus > 1 else ""
    label = f"GPU memory of one fine-tuning step of {est.model}: {est.device_bytes / GIB:.2f} GiB{per_gpu}"
    columns = 1 if narrow else 3
    rows = math.ceil(len(terms) / columns)
    legend_top = bar.top + bar.height + 44
    out = _open(width, legend_top + rows * 18 + 4, label, standalone)
    for i, (kind, line) in enumerate(header):
        style = ' font-size="15" font-weight="600"' if kind == "title" else ' fill="#555"'
        out.append(f'<text class="{kind}" x="{left}" y="{20 + 17 * i}"{style}>{_text(line)}</text>')
    out += _segments(bar, terms) + _axis(bar) + (_budget_line(bar, *budget) if budget else [])
    out += _legend(bar, terms, columns, rows, legend_top)
    out.append("</svg>")
    return "\n".join(out)


def _budget(rec: Recommendation | None) -> tuple[str, int] | None:
    """The recommended GPU's label and budget (usable bytes less the headroom), when there is one."""
    tier = find_tier(rec.recommended) if rec is not None and rec.recommended else None
    if rec is None or tier is None:
        return None
    return f"{rec.recommended} budget ({rec.headroom:.0%} headroom kept)", budget_bytes(tier, rec.headroom)


def _segments(bar: _Bar, terms: list[Term]) -> list[str]:
    """The bar's background and one coloured segment per term, each with its tooltip."""
    out = [f'<rect x="{bar.left}" y="{bar.top}" width="{bar.span}" height="{bar.height}" fill="#f2f2f2"/>']
    start = 0
    for term in terms:
        x0, x1 = bar.x(start), bar.x(start + term.bytes)
        out.append(
            f'<rect class="segment" data-term="{_text(term.term)}" x="{x0:.2f}" y="{bar.top}" '
            f'width="{max(x1 - x0, 0.5):.2f}" height="{bar.height}" fill="{term_colour(term.term)}">'
            f"<title>{_text(term.term)}: {term.bytes / GIB:.3f} GiB, {_text(term.note)}</title></rect>"
        )
        start += term.bytes
    return out


def _tick_label(value: float) -> str:
    return f"{value / GIB:,.10g} GiB"


def _axis(bar: _Bar) -> list[str]:
    """GiB ticks under the bar at round values (nice_step), the last at the scale's end."""
    out = []
    count = round(bar.scale_max / bar.step)
    for i in range(count + 1):
        value = bar.step * i
        anchor = "start" if i == 0 else "end" if i == count else "middle"
        out.append(
            f'<line x1="{bar.x(value):.2f}" y1="{bar.top + bar.height}" x2="{bar.x(value):.2f}" '
            f'y2="{bar.top + bar.height + 4}" stroke="#999"/>'
        )
        out.append(
            f'<text class="tick" x="{bar.x(value):.2f}" y="{bar.axis_y}" text-anchor="{anchor}" fill="#555">'
            f"{_tick_label(value)}</text>"
        )
    return out


def _budget_line(bar: _Bar, label: str, nbytes: int) -> list[str]:
    """A dashed line at the recommended GPU's budget, labelled on the side with room."""
    bx = bar.x(nbytes)
    anchor = "end" if bx > bar.width / 2 else "start"
    dx = -4 if anchor == "end" else 4
    return [
        f'<line x1="{bx:.2f}" y1="{bar.top - 6}" x2="{bx:.2f}" y2="{bar.top + bar.height + 4}" stroke="#222" '
        'stroke-width="2" stroke-dasharray="4 3"/>',
        f'<text x="{bx + dx:.2f}" y="{bar.axis_y + 14}" text-anchor="{anchor}" font-size="11">{_text(label)}</text>',
    ]


def _legend(bar: _Bar, terms: list[Term], columns: int, rows: int, top: int) -> list[str]:
    """One swatch and 'term · GiB' per term, filled column by column."""
    out = []
    col_w = bar.span / columns
    for i, term in enumerate(terms):
        col, row = divmod(i, rows) if rows else (0, 0)
        lx, ly = bar.left + col * col_w, top + row * 18
        out.append(f'<rect x="{lx:.1f}" y="{ly - 10}" width="12" height="12" fill="{term_colour(term.term)}"/>')
        out.append(
            f'<text class="legend" x="{lx + 17:.1f}" y="{ly}" font-size="11">'
            f"{_text(term.term.removesuffix('_bytes'))} · {term.bytes / GIB:.2f} GiB</text>"
        )
    return out
