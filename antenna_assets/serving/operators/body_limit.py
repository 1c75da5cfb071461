"""An ASGI middleware that caps request bodies before anything parses them.

A declared `Content-Length` above the cap is answered 413 at once, the body unread; a body that
streams past the cap (chunked, or longer than declared) stops being read there and is answered 413
too, whatever the application had started doing with it (FastAPI parses forms before a route runs,
so a signed-out client could otherwise make the server read and spool any size).
"""

from __future__ import annotations

from typing import Callable

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """`limit(scope)`: the cap in bytes for this request; `refusal(limit)`: the 413 response."""

    def __init__(self, app: ASGIApp, limit: Callable[[Scope], int], refusal: Callable[[int], Response]):
        self.app, self.limit, self.refusal = app, limit, refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        over = started = False

        async def counted_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the application's answer to a body it never got whole: the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = self.refusal(limit)
        # The rest of the body is never read: the connection cannot carry another request.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
