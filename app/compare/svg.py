"""The comparison chart: one stacked breakdown bar per plan, every bar on the same byte scale."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape, quoteattr

from app.compare.compare import Column, Comparison
from app.compare.report import terms
from app.core.units import GIB
from app.exports.svg import FONT, PALETTE

WIDTH, LEFT, RIGHT = 600, 10, 10
ROW = 66  # label line, bar, gap
BAR = 26


def term_colours(comparison: Comparison) -> dict[str, str]:
    """One colour per term name across every plan (the same term is the same colour in every bar)."""
    return {term: PALETTE[i % len(PALETTE)] for i, term in enumerate(terms(comparison))}


def _x(nbytes: float, scale: int) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * nbytes / scale


def _label(c: Column) -> str:
    per_gpu = " per GPU" if c.planned.estimate.plan.gpus > 1 else ""
    on = f" · {c.choice.gpus} × {c.choice.gpu}" if c.choice.gpu and c.choice.gpus else ""
    return f"{c.number}. {c.planned.estimate.device_bytes / GIB:.1f} GiB{per_gpu}{on}"


def _row(c: Column, top: int, scale: int, colours: dict[str, str]) -> list[str]:
    """The plan's label, its stacked bar and, dashed, the budget of the GPU it is judged on."""
    est = c.planned.estimate
    out = [f'<g class="plan" data-plan="{c.number}">', f"<title>{escape(c.label)}</title>"]
    out.append(f'<text x="{LEFT}" y="{top + 17}" font-size="17" font-weight="600">{escape(_label(c))}</text>')
    bar_top = top + 26
    out.append(f'<rect x="{LEFT}" y="{bar_top}" width="{WIDTH - LEFT - RIGHT}" height="{BAR}" fill="#f2f2f2"/>')
    start = 0
    for term in est.breakdown:
        if term.bytes <= 0:
            continue
        x0, x1 = _x(start, scale), _x(start + term.bytes, scale)
        out.append(
            f'<rect class="segment" data-term="{escape(term.term)}" x="{x0:.2f}" y="{bar_top}" '
            f'width="{max(x1 - x0, 0.5):.2f}" height="{BAR}" fill="{colours[term.term]}">'
            f"<title>plan {c.number}, {escape(term.term)}: {term.bytes / GIB:.3f} GiB</title></rect>"
        )
        start += term.bytes
    if c.choice.budget_bytes:
        bx = _x(c.choice.budget_bytes, scale)
        out.append(
            f'<line class="budget" x1="{bx:.2f}" y1="{bar_top - 4}" x2="{bx:.2f}" y2="{bar_top + BAR + 4}" '
            f'stroke="#222" stroke-width="2" stroke-dasharray="4 3"><title>{escape(c.choice.gpu or "")} budget: '
            f"{c.choice.budget_bytes / GIB:.1f} GiB</title></line>"
        )
    out.append("</g>")
    return out


def _axis(top: int, scale: int) -> list[str]:
    out = []
    for i in range(5):
        value = scale * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(
            f'<text x="{_x(value, scale):.2f}" y="{top}" text-anchor="{anchor}" fill="#555" font-size="15">'
            f"{value / GIB:.0f} GiB</text>"
        )
    return out


def _legend(colours: dict[str, str], top: int) -> list[str]:
    out, columns = [], 2
    rows = math.ceil(len(colours) / columns)
    col_w = (WIDTH - LEFT - RIGHT) / columns
    for i, (term, colour) in enumerate(colours.items()):
        col, row = divmod(i, rows)
        lx, ly = LEFT + col * col_w, top + row * 22
        out.append(f'<rect x="{lx:.1f}" y="{ly - 12}" width="14" height="14" fill="{colour}"/>')
        out.append(
            f'<text class="legend" x="{lx + 20:.1f}" y="{ly}" font-size="15">{escape(term.removesuffix("_bytes"))}</text>'
        )
    return out


def comparison_chart(comparison: Comparison, *, standalone: bool = False) -> str:
    """Every plan's stacked bar (device bytes per GPU) on one scale, each GPU budget dashed, and one legend."""
    scale, colours = comparison.scale_bytes, term_colours(comparison)
    cols = comparison.columns
    legend_top = 40 + len(cols) * ROW + 58
    height = legend_top + math.ceil(len(colours) / 2) * 22 + 4
    label = "GPU memory of " + "; ".join(
        f"plan {c.number} {c.planned.estimate.device_bytes / GIB:.2f} GiB" for c in cols
    )
    out = ['<?xml version="1.0" encoding="UTF-8"?>'] if standalone else []
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'role="img" aria-label={quoteattr(label)} font-family="{FONT}" font-size="13">'
    )
    out += [f"<title>{escape(label)}</title>", f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>']
    out.append(
        f'<text x="{LEFT}" y="22" font-size="17" font-weight="600">GPU memory per GPU, one scale '
        f"(0 to {scale / GIB:.0f} GiB)</text>"
    )
    for i, c in enumerate(cols):
        out += _row(c, 34 + i * ROW, scale, colours)
    out += _axis(40 + len(cols) * ROW + 6, scale)
    out.append(
        f'<text x="{LEFT}" y="{40 + len(cols) * ROW + 30}" fill="#555" font-size="14">'
        "dashed: each plan's GPU budget (usable memory less the headroom)</text>"
    )
    out += _legend(colours, legend_top)
    out.append("</svg>")
    return "\n".join(out)
