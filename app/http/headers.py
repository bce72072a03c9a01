"""Response headers every answer carries, HEAD for every GET route, and the trusted-hosts check.

The HTML pages load one stylesheet from /static, run no script, and colour table swatches with a `style`
attribute, so their policy allows style attributes (`style-src-attr 'unsafe-inline'`) but no inline
`<style>` element, no script and no other origin. /docs loads Swagger UI from this server
(app/http/docs.py) with an inline bootstrap script: they get a policy that allows exactly that, and no other origin.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import UntrustedHost
from app.http.problems import PROBLEM_JSON, from_gpuplan

PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; "
    "base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect"})
_COMMON: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers added to the answer for `path`."""
    policy = DOCS_POLICY if path in DOCS_PATHS else PAGE_POLICY
    return [*_COMMON, (b"content-security-policy", policy.encode())]


class SecurityHeadersMiddleware:
    """Adds nosniff, Referrer-Policy, X-Frame-Options and the Content-Security-Policy to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(str(scope.get("path", "")))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {extra_name for extra_name, _ in extra}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class HeadMiddleware:
    """HEAD answers as GET would, without the body (load balancers and uptime checks send HEAD)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def no_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, no_body)


_ADMITTED = "gpuplan.trusted_host"


class TrustedHostsMiddleware:
    """Starlette's TrustedHostMiddleware, answering a foreign Host with a 400 problem that does not echo it."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.guard = TrustedHostMiddleware(self._admit, allowed_hosts=list(allowed_hosts), www_redirect=False)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_ADMITTED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.guard(scope, receive, send)
            return
        refused = False

        async def guarded(message: Message) -> None:
            nonlocal refused
            if scope.get(_ADMITTED):
                await send(message)
            elif not refused:  # the guard's plain-text 400: answered as problem+json instead
                refused = True
                await _refuse(send)

        await self.guard(scope, receive, guarded)


async def _refuse(send: Send) -> None:
    problem = from_gpuplan(
        UntrustedHost("this server does not answer for the Host header sent (GPUPLAN_TRUSTED_HOSTS lists the hosts)")
    )
    body = json.dumps(problem.model_dump(mode="json")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
