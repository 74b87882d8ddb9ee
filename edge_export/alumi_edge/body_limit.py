"""ASGI middleware that answers 413 for bodies over a limit: by Content-Length up front, and while reading."""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    """Raised inside ``receive`` once more than the limit has arrived."""


class BodyLimitMiddleware:
    """Refuses oversized request bodies without reading more than ``max_bytes`` + one chunk."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send, status: int, code: str, detail: str) -> None:
        body = json.dumps({"error": code, "detail": detail}).encode("utf-8")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(
                        send, 400, "bad_request", f"Content-Length {value.decode(errors='replace')!r} is not a number"
                    )
                    return
                if declared > limit:
                    await self._reply(
                        send, 413, "payload_too_large", f"body of {declared} bytes exceeds the limit of {limit} bytes"
                    )
                    return
        received = 0
        response_started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._reply(send, 413, "payload_too_large", f"body exceeds the limit of {limit} bytes")
