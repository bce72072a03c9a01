"""The calibrations chart: estimated vs measured peak on log-log axes in GiB (the table's unit), y = x, ±10 %."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from app.core.units import GIB

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
DEVICE_COLOURS = {"cuda": "#0072B2", "cpu": "#E69F00"}  # Okabe-Ito blue and orange
SIZE, LEFT, TOP, RIGHT, BOTTOM = 420, 72, 16, 44, 64  # the plot square and the margins that hold the labels


@dataclass(frozen=True)
class Point:
    """One measured run: what gpuplan estimated and what was measured, in bytes."""

    estimated: int
    measured: int
    device: str
    label: str


def round_ticks(lo: float, hi: float) -> list[float]:
    """Round GiB values (1, 2, 5 per decade; decades alone past four decades) spanning [lo, hi]."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1.0,) if last - first > 4 else (1.0, 2.0, 5.0)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    start, end = (below[-1] if below else ticks[0]), (above[0] if above else ticks[-1])
    return [t for t in ticks if start <= t <= end]


def tick_label(gib: float) -> str:
    """0.005, 0.01, 0.2, 1, 20 ...: no float noise."""
    return f"{gib:.{max(0, -math.floor(math.log10(gib)))}f}" if gib < 1 else f"{gib:g}"


def _axes(ticks: list[float]) -> tuple[list[str], float, float]:
    """The frame, the round ticks of both axes and their labels; returns the log10 span of the axes too."""
    lo, hi = math.log10(ticks[0]), math.log10(ticks[-1])
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{SIZE}" height="{SIZE}" fill="#fafafa" stroke="#ccc"/>']
    for t in ticks:
        at = (math.log10(t) - lo) / (hi - lo) * SIZE
        x, y = LEFT + at, TOP + SIZE - at
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + SIZE}" stroke="#eee"/>')
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + SIZE}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + SIZE + 18}" text-anchor="middle" fill="#555">{tick_label(t)}</text>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{tick_label(t)}</text>')
    mid = TOP + SIZE / 2
    out.append(f'<text x="{LEFT + SIZE / 2}" y="{TOP + SIZE + 42}" text-anchor="middle">measured peak (GiB)</text>')
    out.append(
        f'<text x="16" y="{mid}" text-anchor="middle" transform="rotate(-90 16 {mid})">estimated peak (GiB)</text>'
    )
    return out, lo, hi


def scatter_chart(points: Sequence[Point], *, standalone: bool = False) -> str:
    """Estimated vs measured peak (GiB, log-log), with the y = x line, a ±10 % band and a legend of the series shown."""
    width, height = LEFT + SIZE + RIGHT, TOP + SIZE + BOTTOM
    label = f"Estimated vs measured peak memory of {len(points)} runs, in GiB"
    out = ['<?xml version="1.0" encoding="UTF-8"?>'] if standalone else []
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label={quoteattr(label)} font-family="{FONT}" font-size="12"><title>{escape(label)}</title>'
    )
    out.append(f'<rect width="{width}" height="{height}" fill="#ffffff"/>')
    if not points:
        out.append(f'<text x="{LEFT}" y="{TOP + 24}">no measured runs match</text></svg>')
        return "\n".join(out)
    values = [v / GIB for p in points for v in (p.estimated, p.measured) if v > 0] or [1.0]
    axes, lo, hi = _axes(round_ticks(min(values), max(values)))
    out += axes

    def at(nbytes: float) -> float:
        return (math.log10(max(nbytes / GIB, 10.0**lo)) - lo) / (hi - lo) * SIZE

    def xy(measured_gib: float, estimated_gib: float) -> str:
        x = (math.log10(measured_gib) - lo) / (hi - lo) * SIZE
        y = (math.log10(estimated_gib) - lo) / (hi - lo) * SIZE
        return f"{LEFT + x:.1f},{TOP + SIZE - y:.1f}"

    low, high = 10.0**lo, 10.0**hi  # the band |estimated - measured| <= 10 % of measured, clipped to the plot
    band = " ".join(xy(m, m * f) for m, f in ((low, 0.9), (high, 0.9), (high, 1.1), (low, 1.1)))
    out.append(f'<clipPath id="plot-area"><rect x="{LEFT}" y="{TOP}" width="{SIZE}" height="{SIZE}"/></clipPath>')
    out.append(f'<g clip-path="url(#plot-area)"><polygon points="{band}" fill="#009E73" fill-opacity="0.12">')
    out.append("<title>within ±10 %</title></polygon>")
    out.append(f'<line x1="{LEFT}" y1="{TOP + SIZE}" x2="{LEFT + SIZE}" y2="{TOP}" stroke="#009E73" ')
    out.append('stroke-dasharray="5 4"/></g>')
    for p in points:
        out.append(
            f'<circle class="point" cx="{LEFT + at(p.measured):.1f}" cy="{TOP + SIZE - at(p.estimated):.1f}" r="4" '
            f'fill="{DEVICE_COLOURS.get(p.device, "#555")}" fill-opacity="0.8"><title>{escape(p.label)}</title></circle>'
        )
    out += _legend(points)
    out.append("</svg>")
    return "\n".join(out)


def _legend(points: Sequence[Point]) -> list[str]:
    """One entry per device that has points (none for an empty series), and the ±10 % band."""
    counts = {d: sum(1 for p in points if p.device == d) for d in DEVICE_COLOURS}
    shown = [(d, c) for d, c in counts.items() if c]
    out = []
    for i, (device, count) in enumerate(shown):
        y = TOP + 16 + i * 18
        out.append(f'<circle class="legend" cx="{LEFT + 14}" cy="{y}" r="4" fill="{DEVICE_COLOURS[device]}"/>')
        out.append(f'<text x="{LEFT + 24}" y="{y + 4}">{device} ({count:,} runs)</text>')
    y = TOP + 16 + len(shown) * 18
    out.append(f'<rect x="{LEFT + 8}" y="{y - 6}" width="12" height="12" fill="#009E73" fill-opacity="0.25"/>')
    out.append(f'<text x="{LEFT + 24}" y="{y + 4}">within ±10 % (dashed: estimate = measurement)</text>')
    return out
