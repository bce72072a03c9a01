"""The JSON API under /api/v1: its routers (shared HTTP pieces live in app/http/)."""

from __future__ import annotations

from fastapi import APIRouter

from app.http import API_PREFIX

__all__ = ["API_PREFIX", "api_routers"]


def api_routers() -> list[APIRouter]:
    """The routers mounted under /api/v1 (imported on demand: nothing happens at import time)."""
    from app.api import calibrations, compare, estimate, lookup, recipes, report, serving

    return [
        estimate.router,
        recipes.router,
        lookup.router,
        calibrations.router,
        serving.router,
        compare.router,
        report.router,
    ]
