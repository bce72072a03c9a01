"""create_app(): the FastAPI application (JSON API, HTML planner, static files); nothing is built at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.settings import Settings, get_settings

if TYPE_CHECKING:
    import httpx

    from app.api.deps import Store

DESCRIPTION = (
    "GPU memory planner for fine-tuning LLMs (QLoRA, LoRA, full): per-term estimates of one training step, "
    "GPU recommendations, inverse planning and measured accuracy. Errors are `application/problem+json`."
)


def create_app(
    settings: Settings | None = None,
    *,
    hub_transport: httpx.AsyncBaseTransport | None = None,
    store: Store | Literal["settings"] | None = "settings",
) -> FastAPI:
    """Build the app; the lifespan opens the Hub client and the measurement store and closes them on shutdown.

    `store="settings"` opens the store the settings name (SQLite in the data dir, or DATABASE_URL); None runs
    without one (calibration routes answer 503). `hub_transport` and `store` are seams for tests;
    `uvicorn --factory` calls this with no arguments.
    """
    from app.api import API_PREFIX, api_routers, ops, problems
    from app.api.limits import BodyLimitMiddleware
    from app.api.metrics import Metrics, MetricsMiddleware
    from app.hub.client import HubClient
    from app.service import Planner
    from app.web.routes import render_error
    from app.web.routes import router as web_router
    from app.web.templating import STATIC_DIR, make_templates

    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = HubClient(settings, transport=hub_transport)
        app.state.hub = hub
        app.state.planner = Planner(settings, hub, metrics)
        opened = None
        if store == "settings":
            from app.errors import StoreError
            from app.store import Store
            from app.store.seed import seed_store

            try:
                opened = Store.from_settings(settings)
                seed_store(opened)
            except StoreError as exc:  # estimates still work; calibration routes answer 503 and say why
                logging.getLogger("gpuplan").warning("measurement store unavailable: %s", exc)
        app.state.store = opened if store == "settings" else store
        try:
            yield
        finally:
            await hub.aclose()
            if opened is not None:
                opened.close()

    app = FastAPI(
        title="gpuplan",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.templates = make_templates()
    app.state.store = None if store == "settings" else store
    problems.install(app, html=render_error)
    for prefix, router in [*((API_PREFIX, r) for r in api_routers()), ("", ops.router), ("", web_router)]:
        app.include_router(router, prefix=prefix)
        metrics.name_routes(prefix, router.routes)
        problems.index_methods(app, prefix, router.routes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # add_middleware wraps: the last added runs first (metrics see 413s too)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
