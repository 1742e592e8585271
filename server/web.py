"""Plain HTTP on the service's port: the caption page and the operations endpoints (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import http
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from .hosts import WILDCARD_BINDS, HostPolicy, host_name
from .metrics import Metrics
from .settings import Settings

__all__ = ["Web", "response", "plain"]

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript"),
          "/worklet.js": ("worklet.js", "text/javascript"), "/watch.js": ("watch.js", "text/javascript"),
          "/watch.css": ("watch.css", "text/css"), "/mqtt.js": ("mqtt.js", "text/javascript")}
WATCH = "/watch/"  # /watch/{topic}: the viewer page (watch.html), whatever the topic


class Web:
    def __init__(self, settings: Settings, metrics: Metrics, readiness: Callable[[], dict[str, Any]]) -> None:
        """readiness: the service's state for /readyz; "ready" says whether it takes streams."""
        self.metrics = metrics
        self.readiness = readiness
        # an admin listener on every interface is scraped by address: it serves any Host, as before
        wildcard = host_name(settings.admin_host) in WILDCARD_BINDS
        self.admin_hosts = HostPolicy(settings.admin_host, False, () if wildcard else settings.allowed_hosts)

    def serve(self, path: str, operations: bool) -> Response:
        """The page's files, and the operations endpoints unless a separate admin listener has them."""
        if operations and (answer := self.operations(path)) is not None:
            return answer
        if path.startswith(WATCH) and len(path) > len(WATCH):
            name, content_type = "watch.html", "text/html; charset=utf-8"
        elif path in STATIC:
            name, content_type = STATIC[path]
        else:
            return plain(http.HTTPStatus.NOT_FOUND, "not found\n")
        body = resources.files("captioner.server").joinpath("page", name).read_bytes()
        return response(http.HTTPStatus.OK, body, content_type)

    def operations(self, path: str) -> Response | None:
        if path == "/healthz":
            return plain(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            status = self.readiness()
            code = http.HTTPStatus.OK if status["ready"] else http.HTTPStatus.SERVICE_UNAVAILABLE
            return response(code, json.dumps(status).encode() + b"\n", "application/json")
        if path == "/metrics":
            return response(http.HTTPStatus.OK, self.metrics.exposition(),
                            "text/plain; version=0.0.4; charset=utf-8")
        return None

    def admin_request(self, socket: ServerConnection, request: HttpRequest) -> Response:
        """The admin listener (--admin-port) serves the operations endpoints only, each request over plain HTTP."""
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or not self.admin_hosts.allows_host(hosts[0]):
            self.metrics.rejections.labels("forbidden_host").inc()
            return plain(http.HTTPStatus.FORBIDDEN, "forbidden_host: this server does not serve that Host\n")
        return self.operations(request.path.split("?", 1)[0]) or plain(http.HTTPStatus.NOT_FOUND, "not found\n")

    async def never_upgraded(self, socket: ServerConnection) -> None:
        """The admin listener answers every request in admin_request: this never runs."""


def response(status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """An HTTP response with exactly one Content-Type and Content-Length."""
    fields = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close"),
                      *headers])
    return Response(status, http.HTTPStatus(status).phrase, fields, body)


def plain(status: int, text: str) -> Response:
    return response(status, text.encode(), "text/plain; charset=utf-8")
