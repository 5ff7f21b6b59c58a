"""What every request passes through before its endpoint, as plain ASGI middleware: metrics, the bearer
token of ``/api/*`` and the upload size limit. Each answers on its own when it must (401, 413), in the
API's ``{"error": ...}`` form."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (no process-wide state)."""

    def __init__(self, queue_length: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "altclip_http_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "altclip_http_request_duration_seconds",
            "Time from request to the end of the response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge(
            "altclip_queue_length", "Model jobs accepted and not finished (waiting or running)", registry=self.registry
        )
        self.queue.set_function(queue_length)
        self.text_batch = Histogram(
            "altclip_text_batch_size",
            "Text queries per forward pass of the text tower (micro-batching)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "altclip_queue_full", "Requests refused with 503 because the queue was full", registry=self.registry
        )


class RecordMetrics:
    """Counts every request and times it, labelled by its route's path template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def endpoint(self, scope: Scope) -> str:
        for route in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return getattr(route, "path", "other")
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint, start, status = self.endpoint(scope), time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class RequireToken:
    """``/api/*`` needs ``Authorization: Bearer TOKEN``; the page, /healthz, /metrics and /docs do not."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/api" or scope["path"].startswith("/api/")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                reply = error(401, "this server needs a token: send Authorization: Bearer TOKEN")
                reply.headers["WWW-Authenticate"] = "Bearer"
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AllowAnyOrigin:
    """CORS for ``paths`` alone (clip-retrieval's, which take no credentials): any origin may call them, and a
    preflight is answered here; the page and /api/* stay same-origin."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            asked = dict(scope["headers"]).get(b"access-control-request-headers", b"content-type").decode("latin-1")
            allow = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": asked}
            reply = Response(status_code=204, headers={**allow, "Access-Control-Allow-Origin": "*"})
            await reply(scope, receive, send)
            return

        async def with_origin(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Access-Control-Allow-Origin", "*")
            await send(message)

        await self.app(scope, receive, with_origin)


class LimitBody:
    """Request bodies over ``limit`` bytes get 413: at once from Content-Length, or while a chunked body is read
    (it is then held, at most ``limit`` bytes, and handed on)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def too_large(self) -> JSONResponse:
        return error(413, f"the request body is over the {self.limit / 2**20:g} MB limit")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await error(400, "Content-Length is not a number")(scope, receive, send)
            elif int(declared) > self.limit:
                await self.too_large()(scope, receive, send)
            else:  # the HTTP server itself stops a body at its declared length
                await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self.too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        handed_on = False

        async def replay() -> Message:
            nonlocal handed_on
            if handed_on:
                return await receive()
            handed_on = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)
