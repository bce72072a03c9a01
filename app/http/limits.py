"""ASGI middleware bounding each request: its body (413 problem+json) and its time (the 504 of the deadline)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import deadline
from app.http.problems import PROBLEM_JSON, Problem, from_gpuplan, from_http, problem_response

HtmlErrors = tuple[Callable[[Request], bool], Callable[[Request, Problem, dict[str, str]], Response]]


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (GPUPLAN_MAX_BODY_BYTES)"


class BodyLimitMiddleware:
    """Refuses a declared Content-Length over the limit at once, and a streamed body as soon as it passes it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI re-raises HTTPExceptions from body reading; the problem handler renders it
                    raise HTTPException(413, _too_large(self.limit))
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(from_http(413, _too_large(self.limit)).model_dump(mode="json")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class DeadlineMiddleware:
    """Gives each request `seconds` in all (app.deadline); past them, a 504 naming what it was waiting for.

    Steps that wait (Hub fetches, inventory builds) read the deadline and give up on their own with a
    clearer message; this is the backstop. A response that has started is left to finish.
    """

    def __init__(self, app: ASGIApp, seconds: float, html: HtmlErrors | None = None) -> None:
        self.app = app
        self.seconds = seconds
        self.html = html

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with deadline.started(self.seconds) as budget:
            try:
                async with asyncio.timeout(self.seconds) as timer:
                    await self.app(scope, receive, tracking)
            except TimeoutError:
                if started or not timer.expired():
                    raise
                await self._late(scope, receive, send, from_gpuplan(budget.exceeded()))

    async def _late(self, scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
        request = Request(scope)
        if self.html is not None and self.html[0](request):
            response = self.html[1](request, problem, {})
        else:
            response = problem_response(problem)
        await response(scope, receive, send)
