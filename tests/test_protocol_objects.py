"""The sans-I/O protocol objects, without a server or a model: handshakes, client messages, caption events.

The property tests feed arbitrary paths, query strings, headers, text and binary messages and
check that every outcome is an accept, a documented refusal, a documented error or a valid
command, never an exception (docs/protocol.md lists the codes).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner.server.auth import TokenTable
from captioner.server.errors import BadRequest, ProtocolError
from captioner.server.protocols import (
    PROTOCOLS,
    Accept,
    Audio,
    DeepgramProtocol,
    End,
    Flush,
    NativeProtocol,
    OpenAIRealtimeProtocol,
    Options,
    Refusal,
    Reply,
    Request,
    VoskProtocol,
    close_code,
    http_status,
)
from captioner.server.protocols.parse import json_depth, parse_json, parse_number
from captioner.stream.events import Final, Partial, Word

OPTIONS = Options(model_name="tiny.en", language="en", vosk_sample_rate=8000, max_json_depth=16)
TOKENS = TokenTable({"sesame": (), "tenant-a": ("a-",)})
OPEN = TokenTable({})
N_EXAMPLES = int(__import__("os").environ.get("N_EXAMPLES", 2000))

# The documented codes (docs/protocol.md), per protocol: refusals before the upgrade, errors after it.
REFUSALS = {
    "native": {"unauthorized": 401, "bad_sample_rate": 400, "bad_encoding": 400, "bad_language": 400,
               "bad_parameter": 400, "forbidden_topic": 403},
    "vosk": {"unauthorized": 401, "bad_parameter": 400, "forbidden_topic": 403},
    "deepgram": {"INVALID_AUTH": 401, "UNSUPPORTED_ENCODING": 400, "UNSUPPORTED_CHANNELS": 400,
                 "UNSUPPORTED_LANGUAGE": 400, "bad_sample_rate": 400, "bad_parameter": 400, "forbidden_topic": 403},
    "openai-realtime": {"invalid_api_key": 401, "invalid_intent": 400, "forbidden_topic": 403},
}
ERRORS = {"native": {"bad_message", "bad_audio"}, "vosk": {"bad_message", "bad_config", "bad_sample_rate"},
          "deepgram": set(), "openai-realtime": set()}


def request(path: str = "/v1/stream", query: str = "", headers: list[tuple[str, str]] | None = None) -> Request:
    return Request.parse(f"{path}?{query}" if query else path, headers or [])


def accepted(kind: type, query: str = "", headers: list[tuple[str, str]] | None = None, tokens=OPEN):
    protocol = kind(request(query=query, headers=headers), OPTIONS)
    outcome = protocol.handshake(tokens)
    assert isinstance(outcome, Accept), outcome
    return protocol


def final(segment: int = 0, text: str = "Hello, world.") -> Final:
    words = [Word(w, 0.5 + i * 0.4, 0.8 + i * 0.4, 0.9) for i, w in enumerate(text.split())]
    return Final(segment, text, 0.4, 2.0, words)


# -- handshakes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [NativeProtocol, DeepgramProtocol], ids=["native", "deepgram"])
@pytest.mark.parametrize("rate", ["inf", "1e400", "nan", "-inf", "abc", "4000", "96000"])
def test_sample_rates_that_are_not_finite_or_in_range_are_400(kind, rate):
    """sample_rate=inf, 1e400 and friends are a documented 400 bad_sample_rate, never an exception."""
    refusal = kind(request(query=f"sample_rate={rate}"), OPTIONS).handshake(OPEN)
    assert isinstance(refusal, Refusal) and refusal.status == 400
    assert refusal.error.code == "bad_sample_rate"
    assert json.loads(refusal.body)["code" if kind is NativeProtocol else "err_code"] == "bad_sample_rate"


def test_authentication_comes_before_parameters():
    """No token and a bad sample rate: 401 unauthorized, not 400."""
    refusal = NativeProtocol(request(query="sample_rate=abc"), OPTIONS).handshake(TOKENS)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.error.code) == (401, "unauthorized")
    assert json.loads(refusal.body) == {"type": "error", "code": "unauthorized", "message": "a valid token is required"}
    refusal = DeepgramProtocol(request("/v1/listen", "encoding=flac"), OPTIONS).handshake(TOKENS)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.error.code) == (401, "INVALID_AUTH")


def test_token_in_header_query_or_deepgram_subprotocol():
    """Bearer header, ?token= and Deepgram's ["token", KEY] subprotocol pair all authenticate."""
    assert isinstance(NativeProtocol(request(headers=[("Authorization", "Bearer sesame")]), OPTIONS).handshake(TOKENS),
                      Accept)
    assert isinstance(VoskProtocol(request("/", "token=sesame"), OPTIONS).handshake(TOKENS), Accept)
    outcome = DeepgramProtocol(request("/v1/listen", headers=[("Sec-WebSocket-Protocol", "token, sesame")]),
                               OPTIONS).handshake(TOKENS)
    assert isinstance(outcome, Accept) and outcome.subprotocol == "token"


def test_topic_prefixes_of_a_token():
    """A token with topic prefixes may publish under them only; without ?topic= its session id goes under the first."""
    headers = [("Authorization", "Bearer tenant-a")]
    outcome = NativeProtocol(request(query="topic=a-room", headers=headers), OPTIONS).handshake(TOKENS)
    assert isinstance(outcome, Accept) and outcome.grant.topic("a-room", "s1") == "a-room"
    refusal = NativeProtocol(request(query="topic=b-room", headers=headers), OPTIONS).handshake(TOKENS)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.error.code) == (403, "forbidden_topic")
    outcome = NativeProtocol(request(headers=headers), OPTIONS).handshake(TOKENS)
    assert isinstance(outcome, Accept) and outcome.grant.topic(None, "s1-00042") == "a-s1-00042"
    free = NativeProtocol(request(query="topic=b-room", headers=[("Authorization", "Bearer sesame")]), OPTIONS)
    assert isinstance(free.handshake(TOKENS), Accept)


def test_tokens_file_with_prefixes(tmp_path):
    """The tokens file: a token a line, optional prefixes after it, # comments; bad prefixes are refused at start."""
    path = tmp_path / "tokens"
    path.write_text("# tenants\ntok-a a- shared-\n\ntok-admin\n")
    table = TokenTable.load(("env-token",), str(path))
    assert table.authenticate("tok-a").topic_prefixes == ("a-", "shared-")
    assert table.authenticate("tok-admin").topic_prefixes == ()
    assert table.authenticate("env-token").token == "env-token"
    path.write_text("tok room/\n")
    with pytest.raises(ValueError, match="topic prefix"):
        TokenTable.load((), str(path))


def test_deepgram_refusal_has_its_own_body_and_one_content_type():
    """Deepgram refusals: JSON err_code/err_msg/request_id, dg-error and dg-request-id, one Content-Type."""
    refusal = DeepgramProtocol(request("/v1/listen", "channels=2"), OPTIONS).handshake(OPEN)
    assert isinstance(refusal, Refusal) and refusal.status == 400
    body = json.loads(refusal.body)
    assert body["err_code"] == "UNSUPPORTED_CHANNELS" and body["err_msg"]
    names = [name.lower() for name, _ in refusal.headers]
    assert "content-type" not in names and names.count("dg-error") == 1
    assert dict(refusal.headers)["dg-request-id"] == body["request_id"]
    assert refusal.content_type == "application/json"


def test_codes_of_errors():
    """One map: client errors get their close code and status, anything else 1011 / 500."""
    from captioner.server.errors import Forbidden, MessageTooBig, Overloaded, Throttled, Unauthorized

    cases = [(BadRequest("x"), 1003, 400), (Unauthorized("x"), 1008, 401), (Forbidden("x"), 1008, 403),
             (MessageTooBig(2, 1), 1009, 413), (Throttled("x"), 1008, 429), (Overloaded("x"), 1013, 503),
             (ProtocolError("x", "internal"), 1011, 500), (RuntimeError("x"), 1011, 500)]
    for error, code, status in cases:
        assert (close_code(error), http_status(error)) == (code, status), error


# -- messages and events ------------------------------------------------------------------------


def test_native_messages_become_commands():
    """Audio frames, flush and end become commands; the rest is a documented error."""
    protocol = accepted(NativeProtocol, "sample_rate=16000")
    (audio,) = protocol.receive_binary(np.array([0, 16384, -32768], "<i2").tobytes())
    assert isinstance(audio, Audio) and np.allclose(audio.pcm, [0, 0.5, -1.0])
    assert protocol.receive_text('{"type": "flush"}') == [Flush()]
    assert protocol.receive_text('{"type": "end"}') == [End()]
    assert protocol.receive_text('{"type": "flush", "x": 1e400}') == [Flush()]
    for text, code in [("[" * 100_000 + "]" * 100_000, "bad_message"), ('{"type": NaN}', "bad_message"),
                       ("1" * 5000, "bad_message"), ("[1]", "bad_message")]:
        with pytest.raises(BadRequest) as error:
            protocol.receive_text(text)
        assert error.value.code == code
    for data in [b"", b"\x00"]:
        with pytest.raises(BadRequest) as error:
            protocol.receive_binary(data)
        assert error.value.code == "bad_audio"
    f32 = accepted(NativeProtocol, "encoding=pcm_f32le")
    with pytest.raises(BadRequest, match="NaN"):
        f32.receive_binary(np.array([np.nan], "<f4").tobytes())


MULTILINGUAL = Options(model_name="base", language="en", languages=("en", "de", "es", "fr", "pt"))


@pytest.mark.parametrize(("kind", "query", "language", "task"), [
    (NativeProtocol, "", "en", "transcribe"),
    (NativeProtocol, "language=de", "de", "transcribe"),
    (NativeProtocol, "language=auto&task=translate", "auto", "translate"),
    (DeepgramProtocol, "language=es-419", "es", "transcribe"),
    (DeepgramProtocol, "language=pt-BR", "pt", "transcribe"),
    (DeepgramProtocol, "language=multi", "auto", "transcribe"),
    (DeepgramProtocol, "detect_language=true", "auto", "transcribe"),
])
def test_language_and_task_of_a_stream(kind, query, language, task):
    protocol = kind(request(query=query), MULTILINGUAL)
    assert isinstance(protocol.handshake(OPEN), Accept)
    assert (protocol.speech.language, protocol.speech.task) == (language, task)


@pytest.mark.parametrize(("options", "kind", "query", "code"), [
    (MULTILINGUAL, NativeProtocol, "language=xx", "bad_language"),
    (MULTILINGUAL, NativeProtocol, "task=summarize", "bad_language"),
    (OPTIONS, NativeProtocol, "language=de", "bad_language"),
    (OPTIONS, NativeProtocol, "task=translate", "bad_language"),
    (MULTILINGUAL, DeepgramProtocol, "language=zz-ZZ", "UNSUPPORTED_LANGUAGE"),
    (OPTIONS, DeepgramProtocol, "language=es", "UNSUPPORTED_LANGUAGE"),
])
def test_a_language_or_task_the_model_lacks_is_refused(options, kind, query, code):
    refusal = kind(request(query=query), options).handshake(OPEN)
    assert isinstance(refusal, Refusal) and refusal.status == 400 and refusal.error.code == code


def test_keywords_of_a_stream_and_their_limits():
    protocol = accepted(NativeProtocol, "keywords=Kubernetes,gRPC&keywords=Jane%20Doe&keywords=gRPC")
    assert protocol.speech.keywords == ("Kubernetes", "gRPC", "Jane Doe")
    protocol = accepted(DeepgramProtocol, "keywords=Kubernetes:2&keyterm=Jane%20Doe&keyterm=a:b%20c")
    assert protocol.speech.keywords == ("Kubernetes", "Jane Doe", "a:b c")
    few = Options(max_keywords=2, max_keyword_tokens=12)  # tokens counted as bytes here
    for kind, query in [(NativeProtocol, "keywords=a,b,c"), (NativeProtocol, "keywords=abcdefghijklm"),
                        (DeepgramProtocol, "keyterm=a&keyterm=b&keywords=c:1")]:
        refusal = kind(request(query=query), few).handshake(OPEN)
        assert isinstance(refusal, Refusal) and refusal.error.code == "bad_parameter" and refusal.status == 400


def test_native_partials_false_asks_for_finals_only():
    """partials=false: the stream's speech has no partial updates, and its ready message says so."""
    protocol = accepted(NativeProtocol, "partials=false")
    assert not protocol.speech.partials and json.loads(protocol.opened("s1-00001")[0])["partials"] is False
    assert accepted(NativeProtocol, "").speech.partials
    refusal = NativeProtocol(request(query="partials=maybe"), Options()).handshake(OPEN)
    assert isinstance(refusal, Refusal) and refusal.error.code == "bad_parameter"


def test_native_greeting_events_and_done():
    """ready first, the events as JSON, done last; errors as {"type": "error", ...}."""
    protocol = accepted(NativeProtocol, "sample_rate=22050")
    (ready,) = protocol.opened("s1-00001")
    assert json.loads(ready) == {"type": "ready", "session": "s1-00001", "model": "tiny.en", "sample_rate": 22050,
                                 "encoding": "pcm_s16le", "language": "en", "task": "transcribe", "keywords": 0,
                                 "diarize": False, "partials": True, "protocol": 1}
    (message,) = protocol.event(final())
    assert json.loads(message)["type"] == "final" and json.loads(message)["text"] == "Hello, world."
    assert json.loads(protocol.done(2.5)[0]) == {"type": "done", "audio_s": 2.5}
    assert json.loads(protocol.error_message(BadRequest("no", "bad_audio")))["code"] == "bad_audio"


def test_vosk_config_answers_and_eof():
    """Config sets the rate (a non-finite one is bad_sample_rate); each frame gets one answer; eof ends."""
    protocol = accepted(VoskProtocol)
    assert protocol.sample_rate == 8000
    assert protocol.receive_text('{"config": {"sample_rate": 16000}}') == []
    assert protocol.sample_rate == 16000
    for rate in ["1e400", '"inf"', "1e5", '"x"']:
        with pytest.raises(BadRequest) as error:
            protocol.receive_text(f'{{"config": {{"sample_rate": {rate}}}}}')
        assert error.value.code == "bad_sample_rate"
    commands = protocol.receive_binary(b"\x00\x00\x01")
    assert isinstance(commands[0], Audio) and len(commands[0].pcm) == 1
    assert json.loads(commands[1].text) == {"partial": ""}
    assert protocol.event(final()) == []
    answer = json.loads(protocol.receive_binary(b"\x00")[1].text)  # the odd byte completes a sample
    assert answer["text"] == "Hello, world." and len(answer["result"]) == 2
    assert protocol.receive_text('{"eof" : 1}') == [End()]
    assert json.loads(protocol.done(1.0)[0]) == {"text": ""}


def test_deepgram_messages_and_schema_errors():
    """KeepAlive, Finalize, CloseStream; anything else (deep JSON too) is a SchemaError reply, not a close."""
    protocol = accepted(DeepgramProtocol, "encoding=linear16&sample_rate=16000&interim_results=true")
    assert protocol.receive_text('{"type": "KeepAlive"}') == []
    assert protocol.receive_text('{"type": "Finalize"}') == [Flush()]
    assert protocol.receive_text('{"type": "CloseStream"}') == [End()]
    for text in ["{{{", "[" * 50_000 + "]" * 50_000, '{"type": "Jump"}', "7"]:
        (reply,) = protocol.receive_text(text)
        assert isinstance(reply, Reply) and json.loads(reply.text)["variant"] == "SchemaError"
    assert protocol.receive_binary(b"") == [End()]
    assert protocol.receive_binary(b"\x01") == []  # half a sample waits for the rest
    (audio,) = protocol.receive_binary(b"\x00")
    assert isinstance(audio, Audio) and len(audio.pcm) == 1
    partial = Partial(0, "Hello, world and", "Hello, world", 0.4, 1.5, final().words)
    kinds = [json.loads(m)["is_final"] for m in protocol.event(partial)]
    assert kinds == [True, False]  # the first stable word, then the interim rest
    (last,) = protocol.event(final())
    assert json.loads(last)["speech_final"] and json.loads(last)["channel"]["alternatives"][0]["transcript"]


def test_deepgram_diarize_numbers_speakers_and_waits_for_them():
    """diarize=true: stable words are not sent early (their speakers come with the final); each final word has
    Deepgram's 0-based speaker, the alternative its majority speaker, the metadata a diarize_info."""
    protocol = accepted(DeepgramProtocol, "encoding=linear16&sample_rate=16000&interim_results=true&diarize=true")
    assert protocol.speech.diarize
    partial = Partial(0, "Hello, world and", "Hello, world", 0.4, 1.5, final().words)
    assert [json.loads(m)["is_final"] for m in protocol.event(partial)] == [False]
    labelled = final(text="Hello, big world.")
    words = [replace(w, speaker="S2" if i else "S1") for i, w in enumerate(labelled.words)]
    (message,) = protocol.event(replace(labelled, words=words, speaker="S2"))
    result = json.loads(message)
    alternative = result["channel"]["alternatives"][0]
    assert [w["speaker"] for w in alternative["words"]] == [0, 1, 1] and alternative["speaker"] == 1
    assert result["metadata"]["diarize_info"]["arch"] == "ge2e-online"
    plain = accepted(DeepgramProtocol, "encoding=linear16&sample_rate=16000")
    (message,) = plain.event(final())
    assert "speaker" not in json.loads(message)["channel"]["alternatives"][0]["words"][0]
    for kind, path in ((DeepgramProtocol, "/v1/listen"), (NativeProtocol, "/v1/stream")):
        refusal = kind(request(path, "diarize=maybe"), OPTIONS).handshake(OPEN)
        assert refusal.status == 400 and refusal.error.code == "bad_parameter"


def test_json_depth_and_numbers():
    """The depth scan skips strings and escapes; the number helper takes finite values in range only."""
    assert json_depth('{"a": "[[[\\"[[", "b": [[1]]}') == 3
    assert json_depth("[" * 1000) == 1000
    with pytest.raises(BadRequest):
        parse_json("[" * 17 + "]" * 17, 16)
    assert parse_json("[" * 16 + "]" * 16, 16) == [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]
    assert parse_number(" 16000 ", "rate", 8000, 48000, "x") == 16000
    for value in [True, None, [], "1e400", float("nan"), 10**400, "0x10", 7999.9]:
        with pytest.raises(BadRequest):
            parse_number(value, "rate", 8000, 48000, "x")


# -- properties ---------------------------------------------------------------------------------

QUERY_KEYS = ["sample_rate", "encoding", "language", "token", "topic", "channels", "interim_results", "punctuate",
              "endpointing", "utterance_end_ms", "vad_events", "smart_format", "model", "intent"]
numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["inf", "1e400", "NaN", "-0", "16000", "8000", "48000", "1_6000", "", "0x10"]))
query_values = st.one_of(st.text(max_size=30), numbers.map(str),
                         st.sampled_from(["linear16", "mulaw", "pcm_f32le", "en", "en-US", "fr", "true", "false",
                                          "sesame", "tenant-a", "a-room", "b-room", "transcription"]))
queries = st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=10)), query_values),
                   max_size=8).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
header_names = st.one_of(st.sampled_from(["Authorization", "Sec-WebSocket-Protocol", "Origin", "Host", "X-Other"]),
                         st.text(min_size=1, max_size=12))
header_values = st.one_of(st.text(max_size=40), st.sampled_from(["Bearer sesame", "Token tenant-a", "token, sesame",
                                                                 "bearer, wrong", "Bearer ", "token"]))
headers = st.lists(st.tuples(header_names, header_values), max_size=5)
raw_queries = st.one_of(queries, st.text(max_size=100))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
shaped = st.one_of(
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["flush", "end", "KeepAlive", "Finalize", "CloseStream"]),
                                              json_values)}),
    st.fixed_dictionaries({"config": st.one_of(json_values, st.fixed_dictionaries(
        {"sample_rate": st.one_of(json_values, numbers), "words": json_values}))}),
    st.fixed_dictionaries({"eof": json_values}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_audio_buffer.append", "input_audio_buffer.commit",
                                                    "input_audio_buffer.clear", "session.update"]),
                           "audio": st.one_of(json_values, st.binary(max_size=16).map(
                               lambda data: base64.b64encode(data).decode())),
                           "session": json_values}))
texts = st.one_of(
    st.text(max_size=60),
    json_values.map(json.dumps),
    shaped.map(lambda m: json.dumps(m, allow_nan=True)),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(['{"config": {"sample_rate": 1e400}}', '{"type": Infinity}', "1" * 5000, '{"eof": NaN}',
                     '{"type": "flush"', "\ud7ff", '"\\ud800"']),
)
messages = st.lists(st.one_of(texts, st.binary(max_size=64)), max_size=5)
words = st.lists(st.builds(Word, st.text(max_size=8), st.floats(0, 100), st.floats(0, 100), st.floats(0, 1)),
                 max_size=4)
events = st.lists(st.one_of(
    st.builds(Partial, st.integers(0, 3), st.text(max_size=30), st.text(max_size=20), st.floats(0, 100),
              st.floats(0, 100), words),
    st.builds(Final, st.integers(0, 3), st.text(max_size=30), st.floats(0, 100), st.floats(0, 100), words)),
    max_size=4)


def check_refusal(name: str, refusal: Refusal) -> None:
    assert REFUSALS[name].get(refusal.error.code) == refusal.status, refusal.error.code
    if name in ("native", "deepgram", "openai-realtime"):
        body = json.loads(refusal.body)
        code = {"native": "code", "deepgram": "err_code"}.get(name)
        assert (body[code] if code else body["error"]["code"]) == refusal.error.code
    assert all("\r" not in v and "\n" not in v for _, v in refusal.headers)


def check_commands(name: str, protocol, commands: list) -> None:
    assert isinstance(commands, list)
    for command in commands:
        assert isinstance(command, (Audio, Flush, End, Reply)), command
        if isinstance(command, Audio):
            assert command.pcm.dtype == np.float32 and np.all(np.abs(command.pcm) <= 1.0)
        if isinstance(command, Reply):
            json.loads(command.text)


def drive(name: str, kind: type, query: str, header_list, tokens: TokenTable, sent: list, caption_events: list) -> None:
    """One client: handshake, then its messages and some caption events, checking every outcome."""
    try:
        req = Request.parse(f"{next(p for p, k in PROTOCOLS.items() if k is kind)}?{query}", header_list)
    except BadRequest as e:
        assert e.code == "bad_parameter"
        return
    protocol = kind(req, OPTIONS)
    outcome = protocol.handshake(tokens)
    if isinstance(outcome, Refusal):
        check_refusal(name, outcome)
        return
    assert isinstance(outcome, Accept)
    assert isinstance(outcome.grant.topic(protocol.topic, "s1-00001"), str)
    assert protocol.opened("s1-00001") == [] or json.loads(protocol.opened("s1-00001")[0])
    assert 8000 <= protocol.sample_rate <= 48000 and (protocol.silence_s is None or math.isfinite(protocol.silence_s))
    for message in sent:
        audio = isinstance(message, str) and protocol.audio_message(message)
        try:
            commands = protocol.receive_text(message) if isinstance(message, str) else protocol.receive_binary(message)
        except ProtocolError as e:
            assert e.code in ERRORS[name], e.code
            assert close_code(e) in (1003, 1009)
            message = protocol.error_message(e)
            assert message is None or json.loads(message)
            return
        check_commands(name, protocol, commands)
        assert not audio or all(isinstance(c, Audio) for c in commands), "an audio message did more than audio"
        assert 8000 <= protocol.sample_rate <= 48000
    for event in caption_events:
        assert all(json.loads(m) is not None for m in protocol.event(event))
    assert all(json.loads(m) is not None for m in protocol.done(1.0))


PROPERTY = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name, kind", [("native", NativeProtocol), ("vosk", VoskProtocol),
                                        ("deepgram", DeepgramProtocol), ("openai-realtime", OpenAIRealtimeProtocol)],
                         ids=["native", "vosk", "deepgram", "openai-realtime"])
@PROPERTY
@given(query=raw_queries, header_list=headers, authenticated=st.booleans(), sent=messages, caption_events=events)
def test_any_client_gets_a_documented_outcome(name, kind, query, header_list, authenticated, sent, caption_events):
    """Arbitrary requests and messages: an accept, a documented refusal or error, or valid commands; never a crash."""
    drive(name, kind, query, header_list, TOKENS if authenticated else OPEN, sent, caption_events)


@pytest.mark.parametrize(("kind", "query", "end"), [
    (NativeProtocol, "", '{"type": "end"}'),
    (VoskProtocol, "", '{"eof" : 1}'),
    (DeepgramProtocol, "encoding=linear16&sample_rate=16000", '{"type": "CloseStream"}'),
])
def test_over_the_text_rate_only_the_end_is_acted_on(kind, query, end):
    """A message over the rate changes nothing (a Vosk config keeps its rate, a Deepgram Finalize marks no
    result), while the end of the stream is still honoured."""
    protocol = accepted(kind, query)
    rate = protocol.sample_rate
    for text in ('{"config": {"sample_rate": 44100}}', '{"type": "Finalize"}', '{"type": "flush"}'):
        with contextlib.suppress(ProtocolError):
            assert not [c for c in protocol.receive_text(text, throttled=True) if not isinstance(c, (Flush, Reply))]
    assert protocol.sample_rate == rate and not getattr(protocol, "_finalizing", False)
    assert End() in protocol.receive_text(end, throttled=True)
