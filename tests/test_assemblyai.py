"""AssemblyAI's v3 streaming protocol at /v3/ws: the protocol object alone, a server on the fake engine (the fast
tier), and AssemblyAI's own Python SDK, unmodified, against the real model over TLS (slow)."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from dataclasses import replace

import pytest
from client import read_pcm16, stream
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_objects import events as any_events
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captioner.server.auth import Grant, TokenTable
from captioner.server.errors import BadRequest, MessageTooBig, Overloaded, ProtocolError, Throttled
from captioner.server.protocols import Accept, AssemblyAIProtocol, Audio, End, Flush, Options, Refusal, Request
from captioner.stream.events import Final, Partial, Word

OPTIONS = Options(model_name="tiny.en")
MULTILINGUAL = Options(model_name="base", languages=("en", "de", "es"))
TOKENS = TokenTable({"sesame": ()})
OPEN = TokenTable({})
CLIP = "LJ001-0001"


def run(coroutine):
    return asyncio.run(coroutine)


def protocol_for(query: str = "", headers: list[tuple[str, str]] | None = None, options: Options = OPTIONS,
                 tokens: TokenTable = OPEN) -> AssemblyAIProtocol | Refusal:
    """The protocol object after its handshake, or the refusal."""
    protocol = AssemblyAIProtocol(Request.parse(f"/v3/ws?{query}", headers or []), options)
    outcome = protocol.handshake(tokens)
    return protocol if isinstance(outcome, Accept) else outcome


def words(text: str, start: float = 0.5, step: float = 0.4) -> list[Word]:
    return [Word(w, start + k * step, start + k * step + 0.3, 0.9) for k, w in enumerate(text.split())]


def sent(protocol: AssemblyAIProtocol, event) -> list[dict]:
    return [json.loads(m) for m in protocol.event(event)]


# -- handshakes ----------------------------------------------------------------------------------


def test_parameters_of_a_stream():
    """sample_rate, encoding, format_turns, keyterms_prompt, speaker_labels and the turn silences set the stream."""
    protocol = protocol_for("sample_rate=8000&encoding=pcm_mulaw&format_turns=true&speaker_labels=true"
                            "&keyterms_prompt=%5B%22Kubernetes%22%2C%22Jane%20Doe%22%5D"
                            "&min_turn_silence=400&max_turn_silence=1280&speech_model=universal-streaming-english")
    assert (protocol.sample_rate, protocol.encoding, protocol.format_turns) == (8000, "mulaw", True)
    assert protocol.speech.keywords == ("Kubernetes", "Jane Doe") and protocol.speech.diarize
    assert protocol.silence_s == 1.28  # max_turn_silence: captioner ends a turn on silence alone
    assert protocol_for("min_turn_silence=160").silence_s == 0.16
    assert protocol_for("max_turn_silence=0").silence_s == 0.1
    plain = protocol_for()
    assert (plain.sample_rate, plain.encoding, plain.format_turns, plain.silence_s) == (16000, "s16le", False, None)


def test_language_detection_needs_a_multilingual_model():
    """language_detection=true is language auto on a multilingual model, a 400 on an English-only one."""
    assert protocol_for("language_detection=true", options=MULTILINGUAL).speech.language == "auto"
    assert protocol_for("language_code=de", options=MULTILINGUAL).speech.language == "de"
    refusal = protocol_for("language_detection=true")
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.error.code) == (400, "bad_language")
    assert "English-only" in json.loads(refusal.body)["error"]


@pytest.mark.parametrize(("query", "code"), [
    ("sample_rate=96000", "bad_sample_rate"),
    ("sample_rate=abc", "bad_sample_rate"),
    ("encoding=opus", "bad_encoding"),
    ("format_turns=maybe", "bad_parameter"),
    ("keyterms_prompt=Kubernetes", "bad_parameter"),
    ("keyterms_prompt=%5B1%5D", "bad_parameter"),
    ("min_turn_silence=-1", "bad_parameter"),
    ("max_turn_silence=inf", "bad_parameter"),
    ("min_turn_silence=2000&max_turn_silence=1000", "bad_parameter"),
    ("speaker_labels=yes", "bad_parameter"),
    ("language_code=xx", "bad_language"),
], ids=lambda value: value if "=" in str(value) else None)
def test_bad_parameters_are_400_with_assemblyai_error_body(query, code):
    """A bad parameter: HTTP 400, {"error": ...} saying what is wrong, captioner's code for the metrics."""
    refusal = protocol_for(query)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.error.code) == (400, code)
    assert refusal.content_type == "application/json" and set(json.loads(refusal.body)) == {"error"}


@pytest.mark.parametrize("headers, query", [
    ([("Authorization", "sesame")], ""),
    ([("Authorization", "Bearer sesame")], ""),
    ([], "token=sesame"),
], ids=["raw-key", "bearer", "token-query"])
def test_key_in_authorization_raw_or_bearer_or_token_query(headers, query):
    assert isinstance(protocol_for(query, headers, tokens=TOKENS), AssemblyAIProtocol)


def test_wrong_or_expired_key_is_401_before_parameters():
    """A wrong key (even with bad parameters): 401 with AssemblyAI's body; an expired secret says so."""
    refusal = protocol_for("sample_rate=abc", [("Authorization", "nope")], tokens=TOKENS)
    assert (refusal.status, refusal.error.code) == (401, "unauthorized")
    assert json.loads(refusal.body) == {"error": "Authentication error, API token missing/invalid"}
    secret, _ = TOKENS.mint(Grant("sesame"), 60, now=time.time() - 120)
    refusal = protocol_for(f"token={secret}", tokens=TOKENS)
    assert (refusal.status, refusal.error.code) == (401, "expired")
    fresh, _ = TOKENS.mint(Grant("sesame"), 60)
    assert isinstance(protocol_for(f"token={fresh}", tokens=TOKENS), AssemblyAIProtocol)


# -- messages -----------------------------------------------------------------------------------


def test_client_messages_become_commands():
    """Terminate ends, ForceEndpoint flushes, KeepAlive does nothing; audio keeps whole samples."""
    protocol = protocol_for("format_turns=false")
    assert protocol.receive_text('{"type": "Terminate"}') == [End()]
    assert protocol.receive_text('{"type": "ForceEndpoint"}') == [Flush()]
    assert protocol.receive_text('{"type": "KeepAlive"}') == []
    assert protocol.receive_binary(b"\x00") == []  # half a sample waits for the rest
    (audio,) = protocol.receive_binary(b"\x40")
    assert isinstance(audio, Audio) and list(audio.pcm) == [0.5]
    assert protocol.receive_text('{"type": "UpdateConfiguration", "format_turns": true, "max_turn_silence": 900, '
                                 '"keyterms_prompt": ["a"], "end_of_turn_confidence_threshold": 0.5}') == []
    assert protocol.format_turns and protocol.silence_s is None  # endpointing is fixed when the stream opens
    protocol.receive_text('{"type": "UpdateConfiguration", "format_turns": false}', throttled=True)
    assert protocol.format_turns  # over the text rate: nothing changes
    assert protocol.receive_text('{"type": "ForceEndpoint"}', throttled=True) == []
    assert protocol.receive_text('{"type": "Terminate"}', throttled=True) == [End()]


@pytest.mark.parametrize("text", ["{{", "[]", '{"type": "Jump"}', '{"terminate_session": true}', "[" * 100 + "]" * 100,
                                  '{"type": "UpdateConfiguration", "format_turns": "yes"}',
                                  '{"type": "UpdateConfiguration", "min_turn_silence": 1e400}',
                                  '{"type": "UpdateConfiguration", "keyterms_prompt": "a,b"}'])
def test_bad_messages_are_error_3006(text):
    """A message that is not one of AssemblyAI's: BadRequest, sent as an Error with code 3006."""
    protocol = protocol_for()
    with pytest.raises(BadRequest) as error:
        protocol.receive_text(text)
    assert json.loads(protocol.error_message(error.value))["error_code"] == 3006


def test_errors_get_assemblyai_codes():
    """Each error's code, as AssemblyAI's; a throttled message is a Warning, as the stream goes on."""
    protocol = protocol_for()
    cases = [(MessageTooBig(2, 1), "Error", 3007), (Overloaded("x"), "Error", 1013),
             (ProtocolError("internal error", "internal"), "Error", 3005), (Throttled("x"), "Warning", 4029)]
    for error, kind, code in cases:
        message = json.loads(protocol.error_message(error))
        assert (message["type"], message.get("error_code", message.get("warning_code"))) == (kind, code)
        assert protocol.close_code(error) == code


# -- events -------------------------------------------------------------------------------------


def test_begin_turns_and_termination():
    """Begin with the session id; partial turns; the end of turn; with format_turns the formatted one; Termination."""
    protocol = protocol_for("format_turns=true")
    (begin,) = [json.loads(m) for m in protocol.opened("s1-00001")]
    assert begin["type"] == "Begin" and begin["id"] == "s1-00001" and begin["expires_at"] > time.time()
    (partial,) = sent(protocol, Partial(0, "Hello, world and", "Hello, world", 0.4, 2.0, words("Hello, world")))
    assert partial["transcript"] == "hello" and not partial["end_of_turn"] and partial["turn_order"] == 0
    assert [(w["text"], w["word_is_final"]) for w in partial["words"]] == [("hello", True), ("world", False),
                                                                           ("and", False)]
    assert partial["words"][0] == {"start": 500, "end": 800, "confidence": 0.9, "text": "hello", "word_is_final": True}
    end, formatted = sent(protocol, Final(0, "Hello, world and more.", 0.4, 2.0, words("Hello, world and more.")))
    assert (end["end_of_turn"], end["turn_is_formatted"], end["transcript"]) == (True, False, "hello world and more")
    assert (formatted["turn_is_formatted"], formatted["transcript"]) == (True, "Hello, world and more.")
    assert [w["text"] for w in formatted["words"]] == ["Hello,", "world", "and", "more."]
    assert all(w["word_is_final"] for w in end["words"] + formatted["words"])
    next_turn, _ = sent(protocol, Final(1, "Bye.", 3.0, 4.0, words("Bye.", 3.1)))
    assert next_turn["turn_order"] == 1 and next_turn["transcript"] == "bye"
    assert sent(protocol, Final(2, "", 5.0, 6.0)) == []  # nothing said, no turn
    (termination,) = [json.loads(m) for m in protocol.done(6.6)]
    assert termination["type"] == "Termination" and termination["audio_duration_seconds"] == 7
    assert isinstance(termination["session_duration_seconds"], int)


def test_speaker_labels_come_with_the_final():
    """speaker_labels=true: partial words stay non-final (no speakers yet); final words and the turn get letters."""
    protocol = protocol_for("speaker_labels=true")
    (partial,) = sent(protocol, Partial(0, "Hi there you", "Hi there", 0.0, 2.0, words("Hi there")))
    assert partial["transcript"] == "" and partial["speaker_label"] is None
    assert not any(w["word_is_final"] for w in partial["words"])
    labelled = [replace(w, speaker=s) for w, s in zip(words("Hi there you", 0.1), ("S1", "S2", "S27"))]
    (end,) = sent(protocol, Final(0, "Hi there you", 0.0, 2.0, labelled, speaker="S2"))
    assert [w["speaker"] for w in end["words"]] == ["A", "B", "AA"] and end["speaker_label"] == "B"
    plain = protocol_for()
    (end,) = sent(plain, Final(0, "Hi.", 0.0, 1.0, words("Hi.")))
    assert "speaker_label" not in end and "speaker" not in end["words"][0]


def test_language_detection_fields_on_the_end_of_turn():
    protocol = protocol_for("language_detection=true", options=MULTILINGUAL)
    (partial,) = sent(protocol, Partial(0, "Hola a todos", "Hola a", 0.0, 2.0, words("Hola a"), language="es"))
    assert "language_code" not in partial
    (end,) = sent(protocol, Final(0, "Hola a todos.", 0.0, 2.0, words("Hola a todos."), language="es"))
    assert end["language_code"] == "es" and "language_confidence" in end


def captioner_stream(draw_texts: list[list[str]]) -> list:
    """A segment's partials and final as captioner emits them: a growing stable prefix of whole words whose
    times change from one partial to the next, then the final that starts with every stable text."""
    events, n_stable = [], 0
    for k, texts in enumerate(draw_texts):
        n_stable = min(len(texts), max(n_stable, k))
        stable = [w for w in texts[:n_stable]]
        timed = [Word(w, 0.3 * i + 0.01 * k, 0.3 * i + 0.2 + 0.01 * k, 0.5 + 0.01 * k) for i, w in enumerate(stable)]
        events.append(Partial(0, " ".join(texts), " ".join(stable), 0.0, 3.0, timed))
    return events


wordlists = st.lists(st.sampled_from(["Hello,", "world", "it's", "me.", "—", "Again", "OK?"]), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(first=wordlists, tails=st.lists(wordlists, max_size=5), ending=wordlists, formatted=st.booleans())
def test_words_once_final_never_change(first, tails, ending, formatted):
    """Across a turn's messages, a word sent with word_is_final is sent again the same in every later unformatted Turn
    (text, times, confidence), and the transcript is the final words' text."""
    texts = [first]
    for tail in tails:  # each hypothesis keeps the last one's stable words
        texts.append(texts[-1][: len(texts)] + tail)
    events = captioner_stream(texts)
    stable = events[-1].stable.split()
    final_words = stable + ending
    final = Final(0, " ".join(final_words), 0.0, 3.0,
                  [Word(w, 0.3 * i + 0.05, 0.3 * i + 0.25, 0.99) for i, w in enumerate(final_words)])
    protocol = protocol_for(f"format_turns={str(formatted).lower()}")
    messages = [m for event in events + [final] for m in sent(protocol, event)]
    unformatted = [m for m in messages if not m["turn_is_formatted"]]
    seen: list[dict] = []
    for message in unformatted:
        finals = [w for w in message["words"] if w["word_is_final"]]
        assert finals[: len(seen)] == seen
        assert message["words"][: len(finals)] == finals  # final words lead
        assert message["transcript"] == " ".join(w["text"] for w in finals)
        seen = finals
    assert unformatted[-1]["end_of_turn"] and len(messages) == len(events) + 1 + formatted


QUERY_KEYS = ["sample_rate", "encoding", "format_turns", "keyterms_prompt", "min_turn_silence", "max_turn_silence",
              "speaker_labels", "language_detection", "language_code", "token", "speech_model"]
query_values = st.one_of(st.text(max_size=20), st.sampled_from(["16000", "8000", "pcm_mulaw", "true", "false", "1e400",
                                                               '["a", "b c"]', "[[[]]]", '["x"', "de", "sesame"]))
queries = st.lists(st.tuples(st.sampled_from(QUERY_KEYS), query_values), max_size=6).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
message_texts = st.one_of(st.text(max_size=40), st.sampled_from([
    '{"type": "Terminate"}', '{"type": "ForceEndpoint"}', '{"type": "KeepAlive"}', '{"type": 7}', "[1]", "null",
    '{"type": "UpdateConfiguration", "format_turns": 1}', '{"type": "UpdateConfiguration", "keyterms_prompt": [1]}',
    '{"type": "UpdateConfiguration", "max_turn_silence": "x"}', '{"type": "UpdateConfiguration"}']))


@settings(max_examples=500, deadline=None)
@given(query=queries, key=st.sampled_from([None, "sesame", "Bearer sesame", "wrong", ""]),
       sent_messages=st.lists(st.one_of(message_texts, st.binary(max_size=16)), max_size=5), caption_events=any_events,
       options=st.sampled_from([OPTIONS, MULTILINGUAL]))
def test_any_client_gets_a_documented_outcome(query, key, sent_messages, caption_events, options):
    """Arbitrary parameters, messages and events: a refusal, commands, a BadRequest or JSON messages; never a crash."""
    outcome = protocol_for(query, [("Authorization", key)] if key is not None else [], options, TOKENS)
    if isinstance(outcome, Refusal):
        assert outcome.status in (400, 401) and set(json.loads(outcome.body)) == {"error"}
        return
    for message in sent_messages:
        try:
            commands = (outcome.receive_text(message) if isinstance(message, str)
                        else outcome.receive_binary(message))
        except BadRequest as e:
            assert json.loads(outcome.error_message(e))["error_code"] == 3006
            break
        assert all(isinstance(c, (Audio, Flush, End)) for c in commands)
    for event in caption_events:
        assert all(json.loads(m)["type"] == "Turn" for m in outcome.event(event))
    assert json.loads(outcome.done(1.0)[0])["type"] == "Termination"


# -- a server on the fake engine -----------------------------------------------------------------


async def assemblyai_client(url: str, pcm: bytes, query: str = "sample_rate=16000", headers: dict | None = None,
                            before: list[str] = (), after: list[str] = ('{"type": "Terminate"}',),
                            chunk_ms: int = 100) -> tuple[list[dict], int | None]:
    """As an AssemblyAI client: audio in chunks (a text message before and after), every message read."""
    messages = []
    async with connect(f"{url}/v3/ws?{query}", additional_headers=headers or {}) as ws:
        async def read():
            try:
                async for message in ws:
                    messages.append(json.loads(message))
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        try:
            for text in before:
                await ws.send(text)
            step = 16000 * chunk_ms // 1000 * 2
            for start in range(0, len(pcm), step):
                await ws.send(pcm[start : start + step])
                await asyncio.sleep(0.005)
            for text in after:
                await ws.send(text)
        except ConnectionClosed:
            pass
        await reader
        return messages, ws.close_code


@pytest.fixture(scope="module")
def speech(samples) -> bytes:
    """Six seconds of speech at 16 kHz (the fake engine transcribes what the VAD finds speech)."""
    return read_pcm16(samples["1688-142285-0000"]["path"], seconds=6)[0]


def test_a_stream_on_the_fake_engine(make_fake_server, speech):
    """Begin first; partial turns, then each turn's end and formatted end; Termination last; close 1000."""
    server = make_fake_server()
    messages, code = run(assemblyai_client(server.url, speech, "sample_rate=16000&format_turns=true",
                                           before=['{"type": "KeepAlive"}']))
    assert code == 1000
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "Begin" and kinds[-1] == "Termination" and set(kinds[1:-1]) == {"Turn"}
    assert messages[-1]["audio_duration_seconds"] == 6
    turns = messages[1:-1]
    ends = [t for t in turns if t["end_of_turn"]]
    assert any(not t["end_of_turn"] for t in turns) and ends
    assert [t["turn_is_formatted"] for t in ends] == [False, True] * (len(ends) // 2)
    assert [t["turn_order"] for t in ends[::2]] == list(range(len(ends) // 2))
    assert ends[-1]["transcript"].startswith("w0 w1")


def test_final_words_never_change_across_a_stream(make_fake_server, speech):
    """On a stream with ForceEndpoint in it, every word sent as final is sent the same in every later Turn of its
    turn, and the turn's end is made of them."""
    server = make_fake_server()
    half = len(speech) // 4 * 2
    force = ['{"type": "ForceEndpoint"}', '{"type": "Terminate"}']
    messages, _ = run(assemblyai_client(server.url, speech[:half], after=force))
    messages2, _ = run(assemblyai_client(server.url, speech))
    for stream_messages in (messages, messages2):
        by_turn: dict[int, list[dict]] = {}
        for message in stream_messages:
            if message["type"] == "Turn":
                by_turn.setdefault(message["turn_order"], []).append(message)
        assert by_turn
        for turn in by_turn.values():
            seen: list[dict] = []
            for message in turn:
                finals = [w for w in message["words"] if w["word_is_final"]]
                assert finals[: len(seen)] == seen
                seen = finals
            assert turn[-1]["end_of_turn"] and sum(m["end_of_turn"] for m in turn) == 1
        partials = [m for m in stream_messages if m["type"] == "Turn" and not m["end_of_turn"]]
        assert any(w["word_is_final"] for m in partials for w in m["words"])  # words became final before the end


def test_wrong_key_and_expired_secret_are_refused_before_any_audio(make_fake_server):
    """A wrong key or an expired secret: HTTP 401 and AssemblyAI's body, no upgrade; a fresh secret streams."""
    server = make_fake_server(tokens=("k",))
    secret, _ = server.app.tokens.mint(Grant("k"), 60, now=time.time() - 120)
    for query, headers in (("sample_rate=16000", {"Authorization": "wrong"}), (f"token={secret}", {}),
                           ("sample_rate=16000", {})):
        with pytest.raises(InvalidStatus) as refused:
            run(assemblyai_client(server.url, b"", query, headers))
        assert refused.value.response.status_code == 401
        assert "error" in json.loads(refused.value.response.body)
    fresh, _ = server.app.tokens.mint(Grant("k"), 60)
    for query, headers in ((f"token={fresh}", {}), ("", {"Authorization": "k"})):
        messages, code = run(assemblyai_client(server.url, bytes(3200), query, headers))
        assert code == 1000 and messages[0]["type"] == "Begin"


def test_bad_parameter_and_bad_message_on_the_server(make_fake_server):
    """A bad parameter: HTTP 400 with {"error"}; a bad message: an Error 3006, then the close."""
    server = make_fake_server()
    with pytest.raises(InvalidStatus) as refused:
        run(assemblyai_client(server.url, b"", "encoding=aac"))
    assert refused.value.response.status_code == 400
    assert "aac" in json.loads(refused.value.response.body)["error"]
    messages, code = run(assemblyai_client(server.url, bytes(3200), after=['{"type": "Jump"}']))
    assert messages[0]["type"] == "Begin" and messages[-1]["type"] == "Error"
    assert messages[-1]["error_code"] == 3006 and code == 3006


def sdk_stream(host: str, pcm: bytes, rate: int, pace_s: float, **parameters) -> dict[str, list]:
    """Stream with assemblyai's StreamingClient, unmodified (host and key changed), in 100 ms chunks `pace_s` apart;
    every event it dispatched, by kind."""
    from assemblyai.streaming.v3 import StreamingClient, StreamingClientOptions, StreamingEvents, StreamingParameters

    events: dict[str, list] = {"Begin": [], "Turn": [], "Termination": [], "Error": []}
    client = StreamingClient(StreamingClientOptions(api_key="any-key", api_host=host, connect_timeout=10))
    for kind in events:
        client.on(getattr(StreamingEvents, kind), lambda _, event, kind=kind: events[kind].append(event))
    client.connect(StreamingParameters(sample_rate=rate, **parameters))
    step = rate // 10 * 2
    for start in range(0, len(pcm), step):
        client.stream(pcm[start : start + step])
        time.sleep(pace_s)
    client.disconnect(terminate=True)
    return events


def test_sdk_over_plain_websocket_on_the_fake_engine(make_fake_server, speech):
    """The SDK also takes a ws:// host (no TLS): Begin, partial, final and formatted turns, Termination, no error."""
    server = make_fake_server()
    events = sdk_stream(server.url, speech, 16000, 0.01, format_turns=True)
    assert not events["Error"] and len(events["Begin"]) == len(events["Termination"]) == 1
    kinds = {(t.end_of_turn, t.turn_is_formatted) for t in events["Turn"]}
    assert kinds == {(False, False), (True, False), (True, True)}


# -- the official SDK against the real model, over TLS --------------------------------------------


@pytest.fixture
def tls_server(make_server, tmp_path, monkeypatch):
    """A server on the real model over TLS, with a certificate for 127.0.0.1 that Python's default TLS context
    trusts (SSL_CERT_FILE, read by OpenSSL when the SDK makes its context)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return make_server(certfile=str(cert), keyfile=str(key)), cert


def test_official_sdk_streams_and_gets_the_native_finals(tls_server, samples):
    """assemblyai 1.8.2's StreamingClient, only its host and key changed: Begin, partial and formatted turns whose
    text is the native protocol's finals, Termination, no error."""
    server, cert = tls_server
    pcm, rate = read_pcm16(samples[CLIP]["path"])
    native = run(stream(server.url, pcm, rate, pace=1.0, ssl=ssl.create_default_context(cafile=str(cert))))
    assert native.close_code == 1000

    events = sdk_stream(f"127.0.0.1:{server.app.port}", pcm, rate, 0.1, format_turns=True)  # real time
    assert len(events["Termination"]) == 1 and not events["Error"], events["Error"]
    assert len(events["Begin"]) == 1 and events["Begin"][0].id
    turns = events["Turn"]
    assert any(not t.end_of_turn and t.transcript for t in turns)
    formatted = [t for t in turns if t.turn_is_formatted]
    assert formatted and all(t.end_of_turn for t in formatted)
    assert " ".join(t.transcript for t in formatted) == " ".join(native.text.split())
    unformatted = [t for t in turns if t.end_of_turn and not t.turn_is_formatted]
    assert [t.turn_order for t in unformatted] == [t.turn_order for t in formatted] == list(range(len(formatted)))
    assert all(w.start <= w.end for t in formatted for w in t.words)
    assert events["Termination"][0].audio_duration_seconds == round(len(pcm) / 2 / rate)
