"""The HTTP API beside the streams, on the same port: OpenAI's audio transcriptions and translations and its model
list, and the minting of short-lived secrets for browsers (OpenAI's client secrets, AssemblyAI's /v3/token).

Every answer is in OpenAI's error format where OpenAI's clients call (`{"error": {...}}`), and every refusal
comes before the body is read (exchange.py): the path, the method, the key, the server's state and its
capacity for files. An uploaded file is decoded (audiofile.py), then transcribed as a background stream of
the one scheduler: finals only, with the capacity live streams leave, so that files never make live captions
late (stream/batching.py). docs/protocol.md has the mapping and what is not supported.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from captioner.server.errors import BadRequest, ProtocolError, Unauthorized
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.events import Final
from captioner.stream.jobs import AUTO, Speech

from .auth import SECRET_PREFIX, Grant, TokenTable
from .exchange import Answer, Head
from .metrics import Metrics
from .protocols.base import Options, choose_speech, http_status
from .protocols.parse import Request, parse_json, parse_number
from .scheduler import Done, Failed, Scheduler
from .settings import Settings

__all__ = ["Api", "MODEL_ALIASES", "form_fields", "prompt_keywords"]

# OpenAI's transcription models, each an alias of the one model this server runs
MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize")
_DATED = re.compile(r"(gpt-4o(-mini)?-transcribe)-\d{4}-\d{2}-\d{2}")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FEED_S = 2.0  # a file's audio goes to its stream this much at a time...
AHEAD_S = 6.0  # ...while less than this waits for the model: the worker threads never ingest a whole file at once
FEED_POLL_S = 0.02
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
               404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_exceeded", 503: "server_error", 500: "server_error"}


def model_known(name: str, served: str) -> bool:
    """Whether a client's model name means the served model: its own name or an alias of OpenAI's models."""
    return name == served or name in MODEL_ALIASES or _DATED.fullmatch(name) is not None


def prompt_keywords(prompt: str) -> list[str]:
    """The keywords of an OpenAI prompt: its comma-, semicolon- or line-separated items (a prompt of prose is one
    long item, which clean_keywords bounds)."""
    return [item.strip() for item in re.split(r"[,;\n]", prompt) if item.strip()]


@dataclass(frozen=True)
class Part:
    """A field of a multipart form."""

    name: str
    data: bytes
    filename: str | None = None


def form_fields(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart/form-data body, in order. Raises BadRequest."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest("the request must be multipart/form-data with a boundary", "invalid_request")
    parts: list[Part] = []
    state: dict[str, Any] = {}

    def begin() -> None:
        state.update(headers={}, field=b"", value=b"", data=bytearray())

    def end() -> None:
        disposition = state["headers"].get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        if name is not None:
            filename = options.get(b"filename")
            parts.append(Part(name.decode("utf-8", "replace"), bytes(state["data"]),
                              filename.decode("utf-8", "replace") if filename is not None else None))

    callbacks = {
        "on_part_begin": begin,
        "on_part_data": lambda data, start, stop: state["data"].extend(data[start:stop]),
        "on_part_end": end,
        "on_header_field": lambda data, start, stop: state.update(field=state["field"] + data[start:stop]),
        "on_header_value": lambda data, start, stop: state.update(value=state["value"] + data[start:stop]),
        "on_header_end": lambda: (state["headers"].__setitem__(state["field"].lower(), state["value"]),
                                  state.update(field=b"", value=b"")),
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Exception as e:  # python-multipart's errors on a malformed body
        raise BadRequest(f"malformed multipart body: {e}", "invalid_request") from None
    return parts


class Api:
    """The HTTP endpoints; `check` decides on a request's head, `respond` answers it once its body is in."""

    def __init__(self, settings: Settings, options: Options, tokens: TokenTable, scheduler: Scheduler,
                 metrics: Metrics, serving: Callable[[], str | None]) -> None:
        """serving: None while the server takes work, else why not (starting, draining)."""
        self.settings = settings
        self.options = options
        self.tokens = tokens
        self.scheduler = scheduler
        self.metrics = metrics
        self.serving = serving
        self._uploads: set[int] = set()  # ids of the heads of the file requests admitted and not yet answered

    @property
    def files(self) -> int:
        """Files admitted (uploading or being transcribed)."""
        return len(self._uploads)

    # -- OpenAI's error answers -------------------------------------------------------------------

    def error(self, status: int, code: str | None, message: str, param: str | None = None,
              headers: tuple[tuple[str, str], ...] = ()) -> Answer:
        kind = ERROR_TYPES.get(status, "invalid_request_error")
        return Answer(status, _t().openai_error(message, kind, code, param), headers=headers)

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
        self.metrics.requests.labels(path.rsplit("/", 1)[0] if path.startswith("/v1/models/") else path,
                                     str(answer.status)).inc()
        return answer

    def _get(self, path: str, request: Request) -> Answer:
        if path == "/v3/token":
            return self._assemblyai_token(request)
        try:
            self._authenticate(request)
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

    def _authenticate(self, request: Request, mint: bool = False) -> Grant:
        """The grant of the request's key: `Authorization: Bearer <key>` (OpenAI) or the raw key (AssemblyAI).
        Minting takes a long-lived key: a secret may not mint secrets that outlive it."""
        auth = request.headers.get("authorization", "").strip()
        scheme, _, value = auth.partition(" ")
        key = value.strip() if scheme.lower() in ("bearer", "token") and value.strip() else auth or None
        if mint and key is not None and key.startswith(SECRET_PREFIX) and not self.tokens.open:
            raise Unauthorized("a short-lived secret cannot mint another; use an API key", "unauthorized")
        return self.tokens.authenticate(key)

    def _assemblyai_token(self, request: Request) -> Answer:
        """AssemblyAI's GET /v3/token?expires_in_seconds=N."""
        try:
            grant = self._authenticate(request, mint=True)
            ttl = parse_number(request.query.get("expires_in_seconds", ""), "expires_in_seconds", 1,
                               self.settings.max_secret_ttl_s, "invalid_request")
        except ProtocolError as e:
            return _json(http_status(e), {"error": str(e)})  # AssemblyAI's error body
        token, _ = self.tokens.mint(grant, int(ttl))
        return _json(200, {"token": token, "expires_in_seconds": int(ttl)})

    # -- requests with a body (exchange.py) -------------------------------------------------------

    def check(self, head: Head) -> Answer | None:
        """Refuse a request before its body is read: unknown path (404), wrong method (405), not serving (503),
        key (401), no capacity for another file (429)."""
        path, method = head.request.path.rstrip("/"), head.method
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
            self._authenticate(head.request, mint=path in MINTING)
        except ProtocolError as e:
            return self.refused(e)
        if path in FILES:
            if self.files >= self.settings.max_file_jobs:
                return self.error(429, "rate_limit_exceeded", f"{self.files} files are being transcribed, the most "
                                  "this server takes at once (max_file_jobs); retry shortly",
                                  headers=(("Retry-After", "5"),))
            self._uploads.add(id(head))
            self.metrics.files.inc()
        return None

    def finished(self, head: Head | None) -> None:
        """The exchange of this request has ended (answered, or its client gone): its file slot is free."""
        if head is not None and id(head) in self._uploads:
            self._uploads.discard(id(head))
            self.metrics.files.dec()

    async def respond(self, head: Head, body: bytes) -> Answer:
        path = head.request.path.rstrip("/")
        try:
            if path in MINTING:
                answer = self._client_secret(head.request, body, legacy=path != "/v1/realtime/client_secrets")
            else:
                answer = await self._transcribe(head.request, body, "translate" if path.endswith("translations")
                                                else "transcribe")
        except ProtocolError as e:
            answer = self.refused(e, getattr(e, "param", None))
        self.metrics.requests.labels(path, str(answer.status)).inc()
        return answer

    def _client_secret(self, request: Request, body: bytes, legacy: bool) -> Answer:
        """OpenAI's POST /v1/realtime/client_secrets (and the beta /v1/realtime/transcription_sessions)."""
        config = parse_json(body.decode("utf-8", "replace") or "{}", self.options.max_json_depth, "invalid_request")
        if not isinstance(config, dict):
            raise BadRequest("the body must be a JSON object", "invalid_request")
        after = config.get("expires_after") or {}
        seconds = after.get("seconds", 600) if isinstance(after, dict) else after
        ttl = int(parse_number(seconds, "expires_after.seconds", 10, self.settings.max_secret_ttl_s,
                               "invalid_request"))
        token, expires = self.tokens.mint(self._authenticate(request, mint=True), ttl)
        if legacy:  # the beta's transcription session object, with its client_secret
            session = {k: v for k, v in config.items() if k != "expires_after"}
            return _json(200, {"object": "realtime.transcription_session", **session,
                               "client_secret": {"value": token, "expires_at": expires}})
        return _json(200, {"value": token, "expires_at": expires,
                           "session": config.get("session") or {"type": "transcription"}})

    async def _transcribe(self, request: Request, body: bytes, task: str) -> Answer:
        parts = form_fields(body, request.headers.get("content-type", ""))
        file = next((part for part in parts if part.name == "file"), None)
        if file is None or not file.data:
            raise _param(BadRequest("a non-empty `file` field is required", "invalid_request"), "file")
        text = {part.name: part.data.decode("utf-8", "replace").strip() for part in parts if part.name != "file"}
        grains = {part.data.decode("utf-8", "replace").strip() for part in parts
                  if part.name in ("timestamp_granularities[]", "timestamp_granularities")}
        model = text.get("model", "")
        if not model:
            raise _param(BadRequest("you must provide a model parameter", "invalid_request"), "model")
        if not model_known(model, self.options.model_name):
            raise _param(BadRequest(f"model {model[:80]!r} is not served here: {self.options.model_name} (aliases: "
                                    f"{', '.join(MODEL_ALIASES)})", "model_not_found"), "model")
        response_format = text.get("response_format") or "json"
        if response_format not in FORMATS:
            raise _param(BadRequest(f"response_format must be one of {', '.join(FORMATS)}", "invalid_value"),
                         "response_format")
        if grains - {"word", "segment"}:
            raise _param(BadRequest("timestamp_granularities[] takes word and segment", "invalid_value"),
                         "timestamp_granularities")
        if "temperature" in text:
            parse_number(text["temperature"], "temperature", 0, 1, "invalid_value")
        stream = text.get("stream", "false").lower() == "true"
        language = text.get("language") or None
        if task == "translate" or language is None:
            language = AUTO if len(self.options.languages) > 1 else self.options.languages[0]
        speech = choose_speech(self.options, language.lower(), task, "unsupported_language",
                               prompt_keywords(text.get("prompt", "")))
        pcm = await asyncio.get_running_loop().run_in_executor(None, _decode_file, file.data,
                                                               self.settings.max_file_s)
        self.metrics.file_audio.inc(len(pcm) / SAMPLE_RATE)
        finals = self._finals(pcm, speech)
        duration = round(len(pcm) / SAMPLE_RATE, 3)
        if stream:
            return Answer(200, content_type="text/event-stream", headers=(("Cache-Control", "no-cache"),),
                          chunks=_events(finals, duration))
        heard = [final async for final in finals]
        body, content_type = _t().render(heard, duration, response_format, grains, task, _language(heard, speech))
        return Answer(200, body, content_type)

    async def _finals(self, pcm: np.ndarray, speech: Speech) -> AsyncIterator[Final]:
        """The finals of a file, as its background stream makes them; the stream ends if the caller stops."""
        loop = asyncio.get_running_loop()
        stream = self.scheduler.open(SAMPLE_RATE, loop, None, speech, background=True)
        started = time.monotonic()

        async def feed() -> None:
            step = int(FEED_S * SAMPLE_RATE)
            for offset in range(0, len(pcm), step):
                while stream.backlog_s > AHEAD_S:
                    await asyncio.sleep(FEED_POLL_S)
                self.scheduler.push(stream, pcm[offset : offset + step])
            self.scheduler.end(stream)

        feeder = loop.create_task(feed())
        try:
            while True:
                item = await stream.outbox.get()
                if isinstance(item, Final) and item.text:
                    yield item
                elif isinstance(item, Failed):
                    raise RuntimeError(f"the model failed on a file: {item.reason}")
                elif isinstance(item, Done):
                    break
            self.metrics.turnaround.observe(time.monotonic() - started)
        finally:
            feeder.cancel()
            self.scheduler.end(stream)


POSTS = ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/realtime/client_secrets",
         "/v1/realtime/transcription_sessions")
FILES = POSTS[:2]
MINTING = POSTS[2:]


async def _events(finals: AsyncIterator[Final], duration: float) -> AsyncIterator[bytes]:
    """stream=true: a delta per final as it is made, then the whole text."""
    texts = []
    async for final in finals:
        delta = final.text if not texts else " " + final.text
        texts.append(delta)
        yield _t().sse_delta(delta)
    yield _t().sse_done("".join(texts), duration)


def _language(finals: list[Final], speech: Speech) -> str:
    """The language of a file: what its finals were heard in (most of its text), else what was asked."""
    if not finals:
        return speech.language if speech.language != AUTO else "en"
    lengths: dict[str, int] = {}
    for final in finals:
        lengths[final.language] = lengths.get(final.language, 0) + len(final.text)
    return max(lengths, key=lambda language: lengths[language])


def _param(error: BadRequest, param: str) -> BadRequest:
    error.param = param  # type: ignore[attr-defined]
    return error


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "captioner"}


def _json(status: int, value: Any) -> Answer:
    return Answer(status, json.dumps(value).encode())


def _t():  # TEMPORARY: lazy while transcripts.py is being written
    from . import transcripts
    return transcripts


def _decode_file(data: bytes, max_s: float):  # TEMPORARY
    from .audiofile import decode_file
    return decode_file(data, max_s)
