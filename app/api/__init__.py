"""The JSON API under /api/v1, its problem+json errors, dependencies and middleware."""

from __future__ import annotations

from fastapi import APIRouter

API_PREFIX = "/api/v1"


def api_routers() -> list[APIRouter]:
    """The routers mounted under /api/v1 (imported on demand: nothing happens at import time)."""
    from app.api import calibrations, estimate, lookup

    return [estimate.router, lookup.router, calibrations.router]
