"""The Jinja2 environment of the HTML pages: top-level templates/, autoescape on, a few number filters."""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi.templating import Jinja2Templates

from app.core.units import GIB

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"


def gib(nbytes: int | None, digits: int = 2) -> str:
    return "–" if nbytes is None else f"{nbytes / GIB:,.{digits}f} GiB"


def in_gib(nbytes: int, digits: int = 3) -> str:
    """Bytes as a bare GiB number for table cells: in_gib(1610612736, 1) -> '1.5'."""
    return f"{nbytes / GIB:.{digits}f}"


def thousands(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def num(value: float) -> str:
    """32.0 -> 32, 0.05 -> 0.05."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def make_templates() -> Jinja2Templates:
    """A fresh environment per app; autoescape is on for every template, whatever its extension."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["gib"] = gib
    env.filters["in_gib"] = in_gib
    env.filters["thousands"] = thousands
    env.filters["num"] = num
    return Jinja2Templates(env=env)
