"""OpenAI's audio transcriptions and translations: the form of a request, and its file run as a background stream.

A file is decoded (audiofile.py), then fed to a stream of the one scheduler a few seconds at a time
(so that no worker thread ever ingests a whole file at once), as a background stream: finals only,
its passes run when no live stream has work (stream/batching.py), so files never make live
captions late. docs/protocol.md has the mapping and what is not supported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from python_multipart.multipart import MultipartParser, parse_options_header

from captioner.server.errors import BadRequest
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.events import Final
from captioner.stream.jobs import AUTO, Speech

from .metrics import Metrics
from .protocols.base import Options, choose_speech
from .protocols.openai import MODEL_ALIASES, model_known, prompt_keywords
from .protocols.parse import parse_number
from .scheduler import Done, Failed, Scheduler
from .transcripts import RESPONSE_FORMATS, sse_delta, sse_done

__all__ = ["Part", "FileRequest", "form_fields", "file_finals", "sse_events", "spoken_language"]

FEED_S = 2.0  # a file's audio goes to its stream this much at a time...
AHEAD_S = 6.0  # ...while less than this waits for the model
FEED_POLL_S = 0.02


@dataclass(frozen=True)
class Part:
    """A field of a multipart form."""

    name: str
    data: bytes


def form_fields(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart/form-data body, in order. Raises BadRequest."""
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
            parts.append(Part(name.decode("utf-8", "replace"), bytes(state["data"])))

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


@dataclass(frozen=True)
class FileRequest:
    """What a transcription or translation request asks for."""

    file: bytes
    speech: Speech
    response_format: str
    granularities: frozenset[str]
    stream: bool

    @classmethod
    def parse(cls, body: bytes, content_type: str, task: str, options: Options) -> FileRequest:
        """Raises BadRequest (with `param` naming the field, where one is at fault)."""
        parts = form_fields(body, content_type)
        file = next((part for part in parts if part.name == "file"), None)
        if file is None or not file.data:
            raise _param(BadRequest("a non-empty `file` field is required", "invalid_request"), "file")
        text = {part.name: part.data.decode("utf-8", "replace").strip() for part in parts if part.name != "file"}
        grains = frozenset(part.data.decode("utf-8", "replace").strip() for part in parts
                           if part.name in ("timestamp_granularities[]", "timestamp_granularities"))
        model = text.get("model", "")
        if not model:
            raise _param(BadRequest("you must provide a model parameter", "invalid_request"), "model")
        if not model_known(model, options.model_name):
            raise _param(BadRequest(f"model {model[:80]!r} is not served here: {options.model_name} (aliases: "
                                    f"{', '.join(MODEL_ALIASES)})", "model_not_found"), "model")
        response_format = text.get("response_format") or "json"
        if response_format not in RESPONSE_FORMATS:
            raise _param(BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "invalid_value"),
                         "response_format")
        if grains - {"word", "segment"}:
            raise _param(BadRequest("timestamp_granularities[] takes word and segment", "invalid_value"),
                         "timestamp_granularities")
        if "temperature" in text:  # checked, not used: captioner decodes with its configured search
            parse_number(text["temperature"], "temperature", 0, 1, "invalid_value")
        language = text.get("language") or None
        if task == "translate" or language is None:
            language = AUTO if len(options.languages) > 1 else options.languages[0]
        speech = choose_speech(options, language.lower(), task, "unsupported_language",
                               prompt_keywords(text.get("prompt", "")))
        return cls(file.data, speech, response_format, grains, text.get("stream", "false").lower() == "true")


async def file_finals(scheduler: Scheduler, metrics: Metrics, pcm: np.ndarray, speech: Speech
                      ) -> AsyncIterator[Final]:
    """The finals of a file (16 kHz samples), as its background stream makes them; the stream ends if the caller
    stops."""
    loop = asyncio.get_running_loop()
    stream = scheduler.open(SAMPLE_RATE, loop, None, speech, background=True)
    metrics.file_audio.inc(len(pcm) / SAMPLE_RATE)
    started = time.monotonic()

    async def feed() -> None:
        step = int(FEED_S * SAMPLE_RATE)
        for offset in range(0, len(pcm), step):
            while stream.backlog_s > AHEAD_S:
                await asyncio.sleep(FEED_POLL_S)
            scheduler.push(stream, pcm[offset : offset + step])
        scheduler.end(stream)

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
        metrics.turnaround.observe(time.monotonic() - started)
    finally:
        feeder.cancel()
        scheduler.end(stream)


async def sse_events(finals: AsyncIterator[Final], duration: float) -> AsyncIterator[bytes]:
    """stream=true: a delta per final as it is made, then the whole text."""
    texts = []
    async for final in finals:
        delta = final.text if not texts else " " + final.text
        texts.append(delta)
        yield sse_delta(delta)
    yield sse_done("".join(texts), duration)


def spoken_language(finals: list[Final], speech: Speech) -> str:
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
