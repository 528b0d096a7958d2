"""Pure ASGI middleware in front of every HTTP route: the API key is checked before any body byte is read,
and a body that stops arriving ends the request with 408.

FastAPI reads (and parses) a JSON body before it resolves the route's dependencies, so without this a client
without a key could announce a body, never send it, and hold the connection and a task forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

OPEN_PATHS = {"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}


class BodyIdle(Exception):
    pass


class GuardMiddleware:
    def __init__(self, app, check_key: Callable[[str | None], str | None], idle_s: float,
                 open_paths: set[str] | None = None) -> None:
        self.app = app
        self.check_key = check_key  # Authorization header value -> identity or None
        self.idle_s = idle_s
        self.open_paths = OPEN_PATHS | set(open_paths or ())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in self.open_paths:
            auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            if self.check_key(auth) is None:
                await _answer(send, 401, "missing or invalid API key", {"www-authenticate": "Bearer"})
                return
        state = {"started": False, "idle": False, "body_done": False}

        async def timed_receive():
            if state["body_done"] or state["started"]:
                # past the body, receive() only waits for a disconnect (Starlette listens for one while it
                # streams a response): no time limit there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError as exc:
                state["idle"] = True
                raise BodyIdle("request body stalled") from exc
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message) -> None:
            if state["idle"]:
                # whatever the app makes of the stalled body (FastAPI answers 400 "error parsing the body"),
                # the client is told what happened, once
                if not state["started"]:
                    state["started"] = True
                    await _answer(send, 408, "request body stalled", {})
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except BodyIdle:
            if not state["started"]:
                state["started"] = True
                await _answer(send, 408, "request body stalled", {})


async def _answer(send, status: int, detail: str, headers: dict[str, str]) -> None:
    """A JSON error that also closes the connection (the unread body must not be taken for the next request)."""
    body = json.dumps({"detail": detail, "code": "unauthorized" if status == 401 else "timeout",
                       "audit": None}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")] + [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
