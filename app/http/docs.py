"""The API docs (/docs, Swagger UI) served from the fastapi-offline package's files: no CDN, no internet.

FastAPI's documented self-hosting (https://fastapi.tiangolo.com/how-to/custom-docs-ui-assets/): the app is
built with `docs_url=None, redoc_url=None`, and /docs calls `get_swagger_ui_html(swagger_js_url=...,
swagger_css_url=...)` with local URLs. The assets (Swagger UI 5, which renders the OpenAPI 3.1 FastAPI emits)
ship in fastapi-offline's `static/`. ReDoc is not served: its 2.x bundle stops at the schema's `$defs`
references ("Invalid reference token: $defs"), so /redoc would be a blank page.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/static-docs"
FAVICON = "/static/favicon.svg"


def assets_dir() -> Path:
    """fastapi-offline's folder of Swagger UI / ReDoc files (swagger-ui-bundle.js, swagger-ui.css, ...)."""
    return Path(str(files("fastapi_offline") / "static"))


def mount_docs(app: FastAPI, favicon_file: Path) -> None:
    """/docs, its OAuth2 redirect, the assets under /static-docs and /favicon.ico."""
    router = APIRouter(include_in_schema=False)
    title = app.title

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{FAVICON}",
        )

    @router.get("/docs/oauth2-redirect")
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/favicon.ico")
    async def favicon() -> FileResponse:
        return FileResponse(favicon_file, media_type="image/svg+xml")

    app.include_router(router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets_dir()), name="static-docs")
