"""create_app(): the FastAPI application (JSON API, HTML planner, static files); nothing is built at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.settings import Settings, get_settings

if TYPE_CHECKING:
    import httpx

    from app.http.deps import MeasurementStore
    from app.http.metrics import Metrics
    from app.store import Store

DESCRIPTION = (
    "GPU memory planner for fine-tuning LLMs (QLoRA, LoRA, full): per-term estimates of one training step, "
    "GPU recommendations, inverse planning and measured accuracy. Errors are `application/problem+json`."
)


def create_app(
    settings: Settings | None = None,
    *,
    hub_transport: httpx.AsyncBaseTransport | None = None,
    store: MeasurementStore | Literal["settings"] | None = "settings",
) -> FastAPI:
    """Build the app; the lifespan opens the Hub client and the measurement store and closes them on shutdown.

    `store="settings"` opens the store the settings name (SQLite in the data dir, or DATABASE_URL); None runs
    without one (calibration routes answer 503). `hub_transport` and `store` are seams for tests;
    `uvicorn --factory` calls this with no arguments.
    """
    from app.http.metrics import Metrics
    from app.web.templating import make_templates

    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPI(
        title="gpuplan",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan(settings, metrics, hub_transport, store),
        openapi_url="/openapi.json",
        docs_url=None,  # app/http/docs.py serves /docs and /redoc from local files (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.templates = make_templates()
    app.state.store = None if store == "settings" else store
    _mount(app, settings, metrics)
    return app


def _lifespan(
    settings: Settings,
    metrics: Metrics,
    hub_transport: httpx.AsyncBaseTransport | None,
    store: MeasurementStore | Literal["settings"] | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the Hub client, the planner and (store="settings") the seeded store; close them on shutdown."""
    from app.hub.client import HubClient
    from app.inventory.pool import BuildPool
    from app.service import Planner

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = HubClient(settings, transport=hub_transport)
        builds = BuildPool(settings.inventory_workers, settings.inventory_queue, settings.inventory_build_timeout)
        app.state.hub = hub
        app.state.builds = builds
        builds.warm()
        app.state.planner = Planner(settings, hub, metrics, builds=builds)
        opened = _open_store(settings) if store == "settings" else None
        app.state.store = opened if store == "settings" else store
        try:
            yield
        finally:
            await hub.aclose()
            await builds.aclose()
            if opened is not None:
                opened.close()

    return lifespan


def _open_store(settings: Settings) -> Store | None:
    """The settings' store, seeded; None (estimates still work, calibration routes answer 503) when it fails."""
    from app.errors import StoreError
    from app.store import Store
    from app.store.seed import seed_store

    try:
        opened = Store.from_settings(settings)
        seed_store(opened)
    except StoreError as exc:
        logging.getLogger("gpuplan").warning("measurement store unavailable: %s", exc)
        return None
    return opened


def _mount(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Error handlers, the API and HTML routers, static files and the middleware."""
    from app.api import api_routers, ops
    from app.http import API_PREFIX, problems
    from app.http.docs import mount_docs
    from app.http.headers import HeadMiddleware, SecurityHeadersMiddleware, TrustedHostsMiddleware
    from app.http.limits import BodyLimitMiddleware, DeadlineMiddleware
    from app.http.metrics import MetricsMiddleware
    from app.web.compare import router as compare_router
    from app.web.pdf import WebReports
    from app.web.report import router as report_router
    from app.web.routes import render_error
    from app.web.routes import router as web_router
    from app.web.serving import router as serve_router
    from app.web.templating import STATIC_DIR

    problems.install(app, html=render_error)
    for prefix, router in [
        *((API_PREFIX, r) for r in api_routers()),
        ("", ops.router),
        ("", web_router),
        ("", serve_router),
        ("", compare_router),
        ("", report_router),
    ]:
        app.include_router(router, prefix=prefix)
        metrics.name_routes(prefix, router.routes)
        problems.index_methods(app, prefix, router.routes)
    mount_docs(app, STATIC_DIR / "favicon.svg")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.reports = WebReports()  # the API prints pages to PDF through it (app/http/reports.py)
    # add_middleware wraps: the last added runs first (metrics see 400s, 413s and 504s too; every answer of
    # the app, errors included, carries the security headers)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_deadline, html=(problems.wants_html, render_error))
    app.add_middleware(HeadMiddleware)
    app.add_middleware(TrustedHostsMiddleware, allowed_hosts=settings.trusted_hosts)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
