"""Refuse request bodies above a byte limit: early from Content-Length, and while streaming for chunked uploads."""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large(limit: int, got: str) -> str:
    """The 413 message for a request body above the limit."""
    return f"request body of {got} is above the limit max_request_bytes={limit}; send fewer or smaller files"


class BodyLimitMiddleware:
    """ASGI middleware: 413 JSON when a request body exceeds `max_bytes` (never buffers the body itself)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, too_large(self.max_bytes, f"{int(declared)} bytes"))
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # an HTTPException passes through FastAPI's body parsing and becomes a JSON 413
                    raise HTTPException(413, too_large(self.max_bytes, f"more than {self.max_bytes} bytes"))
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, detail: str) -> None:
    """Send a complete `{"detail": ...}` JSON response."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
