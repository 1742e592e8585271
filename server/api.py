"""The HTTP API beside the streams, on the same port: OpenAI's audio transcriptions and translations (files.py) and
its model list, and the minting of short-lived secrets for browsers (OpenAI's client secrets, AssemblyAI's /v3/token).

Every answer is in OpenAI's error format where OpenAI's clients call (`{"error": {...}}`), and every refusal
comes before the body is read (exchange.py): the Host and a browser's Origin, the path, the method, the key,
the server's state and its capacity for files. docs/protocol.md has the mapping and what is not supported.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from captioner.server.errors import BadRequest, ProtocolError, Unauthorized
from captioner.stream.audio import SAMPLE_RATE

from .audiofile import decode_file
from .auth import SECRET_PREFIX, Grant, TokenTable
from .exchange import Answer, Exchange, Head
from .files import FileRequest, file_finals, spoken_language, sse_events
from .hosts import HostPolicy
from .limits import Ticket
from .metrics import Metrics
from .protocols.base import Options, authorization_key, http_status
from .protocols.openai import MODEL_ALIASES, model_known
from .protocols.parse import Request, parse_json, parse_number
from .scheduler import Scheduler
from .settings import Settings
from .transcripts import openai_error, render

__all__ = ["Api"]

POSTS = ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/realtime/client_secrets",
         "/v1/realtime/transcription_sessions")
FILES, MINTING = POSTS[:2], POSTS[2:]
ERROR_TYPES = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}  # else invalid_request_error


class Api:
    """The HTTP endpoints; `check` decides on a request's head, `respond` answers it once its body is in."""

    def __init__(self, settings: Settings, options: Options, tokens: TokenTable, hosts: HostPolicy,
                 scheduler: Scheduler, metrics: Metrics, serving: Callable[[], str | None]) -> None:
        """serving: None while the server takes work, else why not (starting, draining)."""
        self.settings = settings
        self.options = options
        self.tokens = tokens
        self.hosts = hosts
        self.scheduler = scheduler
        self.metrics = metrics
        self.serving = serving
        self.minting = Minting(settings, options, tokens)
        self.exchanges: set[Exchange] = set()  # requests with a body, in progress
        self._uploads: dict[int, tuple[Head, int]] = {}  # per admitted file request (by its head, kept alive so that
        # its id is not reused): how many things (its exchange, work on a thread) still hold its slot

    @property
    def files(self) -> int:
        """Files admitted (uploading or being transcribed)."""
        return len(self._uploads)

    # -- OpenAI's error answers -------------------------------------------------------------------

    def error(self, status: int, code: str | None, message: str, param: str | None = None,
              headers: tuple[tuple[str, str], ...] = ()) -> Answer:
        kind = ERROR_TYPES.get(status, "invalid_request_error")
        return Answer(status, openai_error(message, kind, code, param), headers=headers)

    def refused(self, error: ProtocolError, param: str | None = None) -> Answer:
        status = http_status(error)
        retry = getattr(error, "retry_after_s", None)
        code = "invalid_api_key" if isinstance(error, Unauthorized) else error.code
        return self.error(status, code, str(error), param, (("Retry-After", str(retry)),) if retry else ())

    # -- GET, through the WebSocket listener's plain HTTP path -----------------------------------

    def get(self, request: Request) -> Answer | None:
        """GET /v1/models, /v1/models/{id} and /v3/token; None for any other path (the page, operations)."""
        path = request.path.rstrip("/")
        if path not in ("/v1/models", "/v3/token") and not path.startswith("/v1/models/"):
            return None
        answer = self._get(path, request)
        self.metrics.requests.labels("/v1/models/{id}" if path.startswith("/v1/models/") else path,
                                     str(answer.status)).inc()
        return answer

    def _get(self, path: str, request: Request) -> Answer:
        if path == "/v3/token":
            return self.minting.assemblyai_token(request)
        try:
            self.minting.grant(request)
        except ProtocolError as e:
            return self.refused(e)
        served = self.options.model_name
        if path == "/v1/models":
            return _json(200, {"object": "list", "data": [_model(name) for name in (served, *MODEL_ALIASES)]})
        name = path.removeprefix("/v1/models/")
        if not model_known(name, served):
            return self.error(404, "model_not_found", f"The model `{name[:80]}` does not exist; this server runs "
                              f"{served} (aliases: {', '.join(MODEL_ALIASES)})", "model")
        return _json(200, _model(name))

    # -- requests with a body (exchange.py) -------------------------------------------------------

    def exchange(self, pending: Ticket | None) -> Exchange:
        """An exchange for a request with a body; its client's pending-handshake ticket is released once its head
        is in."""

        def check(head: Head) -> Answer | None:
            if pending is not None:
                pending.release()
            answer = self.check(head)
            if answer is None:
                return None
            path = head.request.path.rstrip("/")
            self.metrics.requests.labels(path if path in POSTS else "other", str(answer.status)).inc()
            return self._cors(head, answer)

        async def respond(head: Head, body: bytes) -> Answer:
            return self._cors(head, await self.respond(head, body))

        def done(exchange: Exchange) -> None:
            if pending is not None:
                pending.release()
            self.finished(exchange.head)
            self.exchanges.discard(exchange)

        exchange = Exchange(check, respond, self.error, self.settings.max_upload_bytes,
                            self.settings.handshake_timeout_s, self.settings.upload_timeout_s, done)
        self.exchanges.add(exchange)
        return exchange

    def abort(self) -> None:
        """Drop every request still in progress (past the drain timeout)."""
        for exchange in list(self.exchanges):
            exchange.abort()

    def _cors(self, head: Head, answer: Answer) -> Answer:
        """The answer, readable by a browser page of an allowed origin that sent the request."""
        origin, host = head.request.headers.get("origin"), head.request.headers.get("host", "")
        if not origin or not self.hosts.allows_origin(origin, host):
            return answer
        headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if head.method == "OPTIONS":
            asked = head.request.headers.get("access-control-request-headers", "")[:1000]
            headers += [("Access-Control-Allow-Methods", "POST"), ("Access-Control-Max-Age", "600"),
                        ("Access-Control-Allow-Headers", asked or "authorization, content-type")]
        return replace(answer, headers=answer.headers + tuple(headers))

    def check(self, head: Head) -> Answer | None:
        """Refuse a request before its body is read: Host or Origin not served (403), unknown path (404), wrong
        method (405), not serving (503), key (401), no capacity for another file (429); answer a browser's
        preflight."""
        path, method = head.request.path.rstrip("/"), head.method
        host, origin = head.request.headers.get("host", ""), head.request.headers.get("origin")
        if not self.hosts.allows_host(host):
            return self.error(403, "forbidden_host", "this server does not serve that Host")
        if not self.hosts.allows_origin(origin, host):
            return self.error(403, "forbidden_origin", "browser origin not allowed")
        if method == "OPTIONS" and origin:  # a browser's preflight of a cross-origin call
            return Answer(204, content_type="text/plain")
        if path not in POSTS:
            return self.error(404, "unknown_url", f"Invalid URL ({method} {head.request.path[:200]})")
        if method != "POST":
            return self.error(405, "method_not_allowed", f"{path} takes POST, not {method[:20]}",
                              headers=(("Allow", "POST"),))
        reason = self.serving()
        if reason is not None:
            return self.error(503, reason, f"the server is {reason}; try again shortly",
                              headers=(("Retry-After", "5"),))
        try:
            self.minting.grant(head.request, mint=path in MINTING)
        except ProtocolError as e:
            return self.refused(e)
        if path in FILES:
            if self.files >= self.settings.max_file_jobs:
                return self.error(429, "rate_limit_exceeded", f"{self.files} files are being transcribed, the most "
                                  "this server takes at once (max_file_jobs); retry shortly",
                                  headers=(("Retry-After", "5"),))
            self._hold(head)
            self.metrics.files.inc()
        elif head.content_length is None or head.content_length > self.settings.max_text_bytes:
            return self.error(413, "request_too_large", f"a JSON body of at most {self.settings.max_text_bytes} "
                              "bytes, with a Content-Length, is required")
        return None

    def finished(self, head: Head | None) -> None:
        """The exchange of this request has ended (answered, or its client gone): its file slot is free once
        no work of it runs any more."""
        if head is not None and id(head) in self._uploads:
            self._drop(head)

    def _hold(self, head: Head) -> None:
        self._uploads[id(head)] = (head, self._uploads.get(id(head), (head, 0))[1] + 1)

    def _drop(self, head: Head) -> None:
        held = self._uploads[id(head)][1] - 1
        self._uploads[id(head)] = (head, held)
        if not held:
            del self._uploads[id(head)]
            self.metrics.files.dec()

    async def _off_loop(self, head: Head, work: Callable[..., Any], *args: Any) -> Any:
        """Work on a thread; the file's slot stays held until it ends, even if the client has gone meanwhile."""
        self._hold(head)
        future = asyncio.get_running_loop().run_in_executor(None, work, *args)
        future.add_done_callback(lambda _: self._drop(head))
        return await future

    async def respond(self, head: Head, body: bytes) -> Answer:
        path = head.request.path.rstrip("/")
        try:
            if path in MINTING:
                answer = self.minting.client_secret(head.request, body, legacy=path != "/v1/realtime/client_secrets")
            else:
                task = "translate" if path.endswith("translations") else "transcribe"
                request = await self._off_loop(head, FileRequest.parse, body,  # 25 MiB: not on the loop
                                               head.request.headers.get("content-type", ""), task, self.options)
                answer = await self._transcribe(request, head)
        except ProtocolError as e:
            answer = self.refused(e, getattr(e, "param", None))
        self.metrics.requests.labels(path, str(answer.status)).inc()
        return answer

    async def _transcribe(self, request: FileRequest, head: Head) -> Answer:
        pcm = await self._off_loop(head, decode_file, request.file, self.settings.max_file_s)
        finals = file_finals(self.scheduler, self.metrics, pcm, request.speech)
        duration = round(len(pcm) / SAMPLE_RATE, 3)
        if request.stream:
            return Answer(200, content_type="text/event-stream", headers=(("Cache-Control", "no-cache"),),
                          chunks=sse_events(finals, duration))
        heard = [final async for final in finals]
        body, content_type = render(heard, duration, request.response_format, request.granularities,
                                    request.speech.task, spoken_language(heard, request.speech))
        return Answer(200, body, content_type)




class Minting:
    """Keys, and the short-lived secrets a long-lived key mints (auth.py makes and checks them)."""

    def __init__(self, settings: Settings, options: Options, tokens: TokenTable) -> None:
        self.settings = settings
        self.options = options
        self.tokens = tokens

    def grant(self, request: Request, mint: bool = False) -> Grant:
        """The grant of the request's key: `Authorization: Bearer <key>` (OpenAI) or the raw key (AssemblyAI).
        Minting takes a long-lived key: a secret may not mint secrets that outlive it."""
        key = authorization_key(request.headers, raw=True)
        if mint and key is not None and key.startswith(SECRET_PREFIX) and not self.tokens.open:
            raise Unauthorized("a short-lived secret cannot mint another; use an API key", "unauthorized")
        return self.tokens.authenticate(key)

    def assemblyai_token(self, request: Request) -> Answer:
        """AssemblyAI's GET /v3/token?expires_in_seconds=N."""
        try:
            grant = self.grant(request, mint=True)
            ttl = parse_number(request.query.get("expires_in_seconds", ""), "expires_in_seconds", 1,
                               self.settings.max_secret_ttl_s, "invalid_request")
        except ProtocolError as e:
            return _json(http_status(e), {"error": str(e)})  # AssemblyAI's error body
        token, _ = self.tokens.mint(grant, int(ttl))
        return _json(200, {"token": token, "expires_in_seconds": int(ttl)})

    def client_secret(self, request: Request, body: bytes, legacy: bool) -> Answer:
        """OpenAI's POST /v1/realtime/client_secrets (and the beta /v1/realtime/transcription_sessions)."""
        config = parse_json(body.decode("utf-8", "replace") or "{}", self.options.max_json_depth, "invalid_request")
        if not isinstance(config, dict):
            raise BadRequest("the body must be a JSON object", "invalid_request")
        after = config.get("expires_after") or {}
        seconds = after.get("seconds", 600) if isinstance(after, dict) else after
        ttl = int(parse_number(seconds, "expires_after.seconds", 10, self.settings.max_secret_ttl_s,
                               "invalid_request"))
        token, expires = self.tokens.mint(self.grant(request, mint=True), ttl)
        if legacy:  # the beta's transcription session object, with its client_secret
            session = {k: v for k, v in config.items() if k != "expires_after"}
            return _json(200, {"object": "realtime.transcription_session", **session,
                               "client_secret": {"value": token, "expires_at": expires}})
        return _json(200, {"value": token, "expires_at": expires,
                           "session": config.get("session") or {"type": "transcription"}})


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "captioner"}


def _json(status: int, value: Any) -> Answer:
    return Answer(status, json.dumps(value).encode())

