"""OpenAI's Realtime API in transcription mode (/v1/realtime?intent=transcription): the protocol object alone, a
session on the fake engine behind it (random audio cuts), a server on the fake engine (fast tier), and the official
`openai` SDK against the real model (slow)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from client import read_pcm16, stream
from hypothesis import given, settings
from hypothesis import strategies as st
from support import WORD_S, FakeEngine
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from captioner.server.auth import TokenTable
from captioner.server.protocols import Accept, Audio, Flush, OpenAIRealtimeProtocol, Options, Refusal, Reply, Request
from captioner.server.protocols.openai_realtime import NO_ENDPOINTING_S
from captioner.stream.events import Final, Partial, Word
from captioner.stream.jobs import AUTO
from captioner.stream.session import Session
from captioner.tools.evaluate import word_errors

OPTIONS = Options(model_name="tiny.en", language="en", languages=("en",))
MULTILINGUAL = Options(model_name="small", language="en", languages=("en", "de", "fr"))
TOKENS = TokenTable({"sesame": ()})
PATH = "/v1/realtime?intent=transcription"
CLIP = "LJ001-0001"
RATE = 24000
FAST_PACE = 16.0
TIMEOUT_SDK_S = 60.0
COMPLETED = "conversation.item.input_audio_transcription.completed"
N_EXAMPLES = int(__import__("os").environ.get("N_EXAMPLES", 12))


def protocol(headers: list[tuple[str, str]] | None = None, options: Options = OPTIONS, tokens: TokenTable = TOKENS,
             path: str = PATH) -> OpenAIRealtimeProtocol:
    realtime = OpenAIRealtimeProtocol(Request.parse(path, headers or [("Authorization", "Bearer sesame")]), options)
    outcome = realtime.handshake(tokens)
    assert isinstance(outcome, Accept), outcome
    return realtime


def send(realtime: OpenAIRealtimeProtocol, kind: str, **fields) -> list:
    return realtime.receive_text(json.dumps({"type": kind, **fields}))


def replies(commands: list) -> list[dict]:
    return [json.loads(c.text) for c in commands if isinstance(c, Reply)]


def update(realtime: OpenAIRealtimeProtocol, **audio_input) -> dict:
    (reply,) = replies(send(realtime, "session.update", session={"type": "transcription",
                                                                 "audio": {"input": audio_input}}))
    return reply


def append(realtime: OpenAIRealtimeProtocol, pcm16: bytes) -> list:
    return send(realtime, "input_audio_buffer.append", audio=base64.b64encode(pcm16).decode())


def words(text: str, start: float = 0.5) -> list[Word]:
    return [Word(w, start + i * 0.4, start + i * 0.4 + 0.3, 0.9) for i, w in enumerate(text.split())]


def partial(segment: int, text: str, stable: str, start: float = 0.4, end: float = 2.0) -> Partial:
    return Partial(segment, text, stable, start, end, words(stable))


def final(segment: int, text: str, start: float = 0.4) -> Final:
    spoken = words(text, start + 0.1)
    return Final(segment, text, spoken[0].start if spoken else start, spoken[-1].end if spoken else start, spoken)


def emitted(realtime: OpenAIRealtimeProtocol, *events) -> list[dict]:
    return [json.loads(m) for e in events for m in realtime.event(e)]


def check_items(messages: list[dict]) -> dict[str, str]:
    """Every item's deltas concatenate to a prefix of its one completed transcript; its transcripts by item id."""
    deltas: dict[str, str] = {}
    completed: dict[str, str] = {}
    for message in messages:
        item = message.get("item_id")
        if message["type"] == "conversation.item.input_audio_transcription.delta":
            assert item not in completed, "a delta after the item's completed"
            deltas[item] = deltas.get(item, "") + message["delta"]
        elif message["type"] == "conversation.item.input_audio_transcription.completed":
            assert item not in completed, "completed twice"
            completed[item] = message["transcript"]
            assert message["usage"]["type"] == "duration" and message["usage"]["seconds"] >= 0
    for item, text in deltas.items():
        if item in completed:
            assert completed[item].startswith(text), (text, completed[item])
    return completed


def of_type(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


# -- handshakes ----------------------------------------------------------------------------------


def test_bearer_header_and_browser_subprotocols_authenticate():
    """Authorization: Bearer (the SDK) and the browser's ["realtime", "openai-insecure-api-key.KEY"]; realtime is
    selected."""
    assert protocol().subprotocol() is None
    browser = protocol([("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.sesame")])
    assert browser.subprotocol() == "realtime"


@pytest.mark.parametrize("key", ["wrong", "ek_1_0123456789abcdef_" + "0" * 64], ids=["wrong", "forged-secret"])
def test_a_wrong_key_is_401_with_openai_error_body(key):
    """A wrong key: 401 before the upgrade, with OpenAI's error body (invalid_api_key)."""
    realtime = OpenAIRealtimeProtocol(Request.parse(PATH, [("Authorization", f"Bearer {key}")]), OPTIONS)
    refusal = realtime.handshake(TOKENS)
    assert isinstance(refusal, Refusal) and refusal.status == 401 and refusal.content_type == "application/json"
    body = json.loads(refusal.body)["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == "invalid_api_key" and body["message"]


def test_an_expired_secret_is_401_and_a_live_one_is_accepted():
    """A minted secret authenticates until it expires; then 401 invalid_api_key, saying it expired."""
    secret, _ = TOKENS.mint(TOKENS.authenticate("sesame"), 60, now=time.time())
    assert isinstance(protocol([("Authorization", f"Bearer {secret}")]), OpenAIRealtimeProtocol)
    expired, _ = TOKENS.mint(TOKENS.authenticate("sesame"), 60, now=time.time() - 120)
    refusal = OpenAIRealtimeProtocol(Request.parse(PATH, [("Sec-WebSocket-Protocol",
                                                           f"realtime, openai-insecure-api-key.{expired}")]),
                                     OPTIONS).handshake(TOKENS)
    assert isinstance(refusal, Refusal) and refusal.status == 401
    assert "expired" in json.loads(refusal.body)["error"]["message"]


def test_only_the_transcription_intent_is_served():
    """Without ?intent=transcription (a conversation session): 400 with OpenAI's error body."""
    refusal = OpenAIRealtimeProtocol(Request.parse("/v1/realtime?model=gpt-realtime", []), OPTIONS).handshake(
        TokenTable({}))
    assert isinstance(refusal, Refusal) and refusal.status == 400
    assert json.loads(refusal.body)["error"]["code"] == "invalid_intent"


# -- session configuration -----------------------------------------------------------------------


def test_session_created_at_once_with_the_defaults():
    """session.created on the upgrade: pcm at 24 kHz, server_vad (500 ms), the served model."""
    (created,) = [json.loads(m) for m in protocol().greeting()]
    assert created["type"] == "session.created" and created["event_id"]
    session = created["session"]
    assert session["type"] == "transcription" and session["id"].startswith("sess_")
    audio = session["audio"]["input"]
    assert audio["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["turn_detection"]["type"] == "server_vad" and audio["turn_detection"]["silence_duration_ms"] == 500
    assert audio["transcription"]["model"] == "tiny.en"


def test_session_update_sets_the_stream():
    """Format, turn detection, model alias, language and prompt map to the stream's parameters."""
    realtime = protocol(options=MULTILINGUAL)
    assert realtime.speech.language == AUTO  # no language on a multilingual model: detected
    reply = update(realtime, format={"type": "audio/pcmu"},
                   transcription={"model": "gpt-4o-transcribe-2025-03-20", "language": "de-DE",
                                  "prompt": "Kubernetes, captioner\nWhisper; a free text sentence of many words here"},
                   turn_detection={"type": "server_vad", "silence_duration_ms": 800, "threshold": 0.6})
    assert reply["type"] == "session.updated"
    assert (realtime.sample_rate, realtime.encoding, realtime.silence_s) == (8000, "mulaw", 0.8)
    assert realtime.speech.language == "de"
    assert realtime.speech.keywords == ("Kubernetes", "captioner", "Whisper")
    audio = reply["session"]["audio"]["input"]
    assert audio["format"] == {"type": "audio/pcmu"}
    assert audio["turn_detection"]["silence_duration_ms"] == 800 and audio["turn_detection"]["threshold"] == 0.6
    assert audio["transcription"]["model"] == "gpt-4o-transcribe-2025-03-20"
    update(realtime, turn_detection=None)
    assert realtime.silence_s == NO_ENDPOINTING_S and realtime.manual


@pytest.mark.parametrize("name", ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                                   "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-diarize",
                                   "gpt-realtime-whisper-latest", "tiny.en"])
def test_model_aliases_are_accepted(name):
    """OpenAI's transcription models (dated or not) and the served model's own name stand for the served model."""
    assert update(protocol(), transcription={"model": name})["type"] == "session.updated"


@pytest.mark.parametrize("audio_input, param", [
    ({"transcription": {"model": "nova-3"}}, "session.audio.input.transcription.model"),
    ({"transcription": {"language": "xx"}}, "session.audio.input.transcription.language"),
    ({"format": {"type": "audio/flac"}}, "session.audio.input.format.type"),
    ({"format": {"type": "audio/pcm", "rate": 1000}}, "session.audio.input.format.rate"),
    ({"turn_detection": {"type": "server_vad", "threshold": 7}}, "session.audio.input.turn_detection.threshold"),
    ({"turn_detection": {"type": "magic"}}, "session.audio.input.turn_detection.type"),
], ids=["model", "language", "format", "rate", "threshold", "vad-type"])
def test_bad_session_updates_get_an_error_and_change_nothing(audio_input, param):
    """A session.update the server cannot honour: an error event naming the parameter and the client's event_id;
    the session is as before."""
    realtime = protocol()
    before = realtime.config
    (error,) = replies(realtime.receive_text(json.dumps({"type": "session.update", "event_id": "evt_1", "session": {
        "type": "transcription", "audio": {"input": audio_input}}})))
    assert error["type"] == "error" and error["event_id"]
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["param"] == param
    assert error["error"]["event_id"] == "evt_1" and error["error"]["message"]
    assert realtime.config == before


@pytest.mark.parametrize("text, code", [
    ("{{{", "invalid_json"), ("[1]", "invalid_event"), ('{"event_id": "e"}', "invalid_event"),
    ('{"type": "response.create"}', "invalid_event"), ('{"type": "nope"}', "invalid_event"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_value"),
    ('{"type": "session.update", "session": 5}', "invalid_type"),
    ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
], ids=["not-json", "not-object", "no-type", "conversation", "unknown", "bad-base64", "bad-session", "empty-commit"])
def test_malformed_events_get_error_events(text, code):
    """Malformed or unsupported client events get an error event (no command), as OpenAI does; nothing closes."""
    commands = protocol().receive_text(text)
    assert all(isinstance(c, Reply) for c in commands)
    (error,) = replies(commands)
    assert error["type"] == "error" and error["error"]["code"] == code


def test_changes_after_the_first_audio_are_refused():
    """Once audio flows the format, turn detection and vocabulary are fixed: such an update gets session_locked; one
    that changes only what the stream does not use is accepted."""
    realtime = protocol()
    (audio,) = append(realtime, np.zeros(2400, "<i2").tobytes())
    assert isinstance(audio, Audio) and len(audio.pcm) == 2400
    (error,) = replies(send(realtime, "session.update", session={"type": "transcription", "audio": {
        "input": {"format": {"type": "audio/pcma"}}}}))
    assert error["error"]["code"] == "session_locked" and realtime.encoding == "s16le"
    assert update(realtime, turn_detection={"type": "server_vad", "threshold": 0.7})["type"] == "session.updated"


def test_beta_transcription_session_update():
    """The beta names: transcription_session.update with flat fields, answered by transcription_session.updated;
    an OpenAI-Beta: realtime=v1 client is greeted with transcription_session.created."""
    realtime = protocol([("Authorization", "Bearer sesame"), ("OpenAI-Beta", "realtime=v1")])
    (created,) = [json.loads(m) for m in realtime.greeting()]
    assert created["type"] == "transcription_session.created" and created["session"]["input_audio_format"] == "pcm16"
    (reply,) = replies(send(realtime, "transcription_session.update", session={
        "input_audio_format": "g711_alaw", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": None}))
    assert reply["type"] == "transcription_session.updated"
    assert reply["session"]["input_audio_format"] == "g711_alaw" and reply["session"]["turn_detection"] is None
    assert (realtime.encoding, realtime.sample_rate, realtime.manual) == ("alaw", 8000, True)


def test_audio_is_decoded_in_whole_samples():
    """Base64 pcm16 split inside a sample carries its odd byte to the next append."""
    realtime = protocol()
    data = np.arange(-5, 5, dtype="<i2").tobytes()
    (first,) = append(realtime, data[:3])
    (second,) = append(realtime, data[3:])
    assert np.allclose(np.concatenate([first.pcm, second.pcm]) * 32768, np.arange(-5, 5))


APPEND = '{"type": "input_audio_buffer.append", "audio": "AAAA"'


@pytest.mark.parametrize("text, audio", [
    (APPEND + "}", True),
    (APPEND + ', "event_id": "e1", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}', True),
    ('{"type": "input_audio_buffer.append", "audio": ""}', False),
    ('{"type": "input_audio_buffer.append", "audio": "%%%"}', False),
    ('{"type": "input_audio_buffer.append", "audio": 5}', False),
    ('{"type": "input_audio_buffer.append"}', False),
    (APPEND + ', "x": ' + "[" * 20 + "]" * 20 + "}", False),
    (APPEND, False),
    ('{"type": "session.update", "session": {"type": "transcription"}}', False),
    ('{"type": "input_audio_buffer.commit"}', False),
], ids=["append", "extra-fields", "empty", "bad-base64", "not-a-string", "no-audio", "too-deep", "not-json",
        "update", "commit"])
def test_audio_messages_are_appends_of_audio_that_do_nothing_else(text, audio):
    """audio_message: an append of base64 audio, whatever else it holds, parsed as receive_text parses; acted on,
    such a message appends its audio and changes nothing else."""
    realtime = protocol()
    before = realtime.config
    assert realtime.audio_message(text) is audio
    if audio:
        (command,) = realtime.receive_text(text)
        assert isinstance(command, Audio) and len(command.pcm) == 1 and realtime.config == before
        (again,) = protocol().receive_text(text + " ")  # not the message audio_message saw: parsed, the same
        assert np.array_equal(again.pcm, command.pcm)


# -- caption events ------------------------------------------------------------------------------


def test_server_vad_each_segment_is_an_item():
    """server_vad: speech_started on the segment's first event, stable words as deltas (the last one held back),
    then speech_stopped, committed, the last delta and completed, whose transcript is the final."""
    realtime = protocol()
    messages = emitted(realtime, partial(0, "Hello there my", "Hello there"),
                       partial(0, "Hello there, my friend", "Hello there, my"),
                       final(0, "Hello there, my friend."), partial(1, "Bye", "", start=3.0, end=4.0),
                       final(1, "Bye.", start=3.0))
    kinds = [m["type"].split(".")[-1] for m in messages]
    assert kinds == ["speech_started", "delta", "delta", "speech_stopped", "committed", "delta", "completed",
                     "speech_started", "speech_stopped", "committed", "delta", "completed"]
    assert messages[0]["audio_start_ms"] == 400 and messages[3]["audio_end_ms"] > 400
    assert [m["delta"] for m in of_type(messages, "conversation.item.input_audio_transcription.delta")] == \
        ["Hello", " there,", " my friend.", "Bye."]
    first, second = of_type(messages, "input_audio_buffer.committed")
    assert first["previous_item_id"] is None and second["previous_item_id"] == first["item_id"]
    assert list(check_items(messages).values()) == ["Hello there, my friend.", "Bye."]


def test_manual_turns_join_finals_until_the_commit():
    """turn_detection null: committed at the commit (with a Flush); the turn's finals (a cut at the length limit
    among them) join into one completed, after the flushed segment's final."""
    realtime = protocol()
    update(realtime, turn_detection=None)
    append(realtime, np.zeros(RATE * 20, "<i2").tobytes())
    messages = emitted(realtime, partial(0, "one two three", "one two"), final(0, "one two three.", start=0.4))
    commands = send(realtime, "input_audio_buffer.commit")
    assert isinstance(commands[-1], Flush)
    messages += replies(commands)
    messages += emitted(realtime, partial(1, "four five", "four", start=15.0, end=16.0), final(1, "four five", 15.0))
    (committed,) = of_type(messages, "input_audio_buffer.committed")
    (completed,) = of_type(messages, "conversation.item.input_audio_transcription.completed")
    assert messages.index(committed) < messages.index(completed) and completed["item_id"] == committed["item_id"]
    assert completed["transcript"] == "one two three. four five" and completed["usage"]["seconds"] == 20.0
    assert not of_type(messages, "input_audio_buffer.speech_started")
    check_items(messages)


def test_an_empty_commit_completes_when_later_speech_shows_it_is_over():
    """A commit of audio without speech: completed with an empty transcript once a later segment's event arrives (or
    at the end); the later segment is the next turn."""
    realtime = protocol()
    update(realtime, turn_detection=None)
    append(realtime, np.zeros(RATE * 2, "<i2").tobytes())
    messages = replies(send(realtime, "input_audio_buffer.commit"))
    append(realtime, np.zeros(RATE * 3, "<i2").tobytes())
    messages += emitted(realtime, partial(0, "later words", "later words", start=2.2, end=3.0))
    (completed,) = of_type(messages, "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == "" and completed["item_id"] == messages[0]["item_id"]
    (delta,) = of_type(messages, "conversation.item.input_audio_transcription.delta")
    assert delta["item_id"] != completed["item_id"]
    messages += replies(send(realtime, "input_audio_buffer.commit"))
    messages += emitted(realtime, final(0, "later words here", start=2.2))
    assert list(check_items(messages).values()) == ["", "later words here"]


def test_clear_drops_the_uncommitted_turn():
    """input_audio_buffer.clear: cleared and a Flush; the cleared segment's later events are not sent, and the next
    speech is a new item."""
    realtime = protocol()
    append(realtime, np.zeros(RATE * 3, "<i2").tobytes())
    messages = emitted(realtime, partial(0, "drop these words", "drop these", end=2.5))
    commands = send(realtime, "input_audio_buffer.clear")
    assert isinstance(commands[-1], Flush) and replies(commands)[0]["type"] == "input_audio_buffer.cleared"
    assert emitted(realtime, final(0, "drop these words")) == []
    append(realtime, np.zeros(RATE * 3, "<i2").tobytes())
    messages += emitted(realtime, final(1, "keep", start=3.5))
    assert list(check_items(messages).values()) == ["keep"]
    assert len(of_type(messages, "input_audio_buffer.speech_started")) == 2


def test_done_commits_what_was_heard_and_errors_are_openai_errors():
    """At the end a turn never committed is committed and completed (no final is lost); a closing error is an
    OpenAI error event."""
    realtime = protocol()
    update(realtime, turn_detection=None)
    append(realtime, np.zeros(RATE, "<i2").tobytes())
    emitted(realtime, final(0, "last words"))
    messages = [json.loads(m) for m in realtime.done(1.0)]
    assert [m["type"] for m in messages] == ["input_audio_buffer.committed",
                                             "conversation.item.input_audio_transcription.completed"]
    assert messages[1]["transcript"] == "last words"
    from captioner.server.errors import Overloaded

    error = json.loads(realtime.error_message(Overloaded("too slow", "backlog")))
    assert error["type"] == "error" and error["error"]["type"] == "server_error" and error["error"]["code"] == "backlog"


# -- random audio cuts through a session on the fake engine --------------------------------------


@pytest.fixture(scope="module")
def clip_24k() -> bytes:
    return clip_pcm16()


@functools.cache
def clip_pcm16() -> bytes:
    """The clip as pcm16 at 24 kHz (a function, not a fixture argument: hypothesis would print its bytes)."""
    pcm, rate = read_pcm16(Path(__file__).resolve().parent.parent / "samples" / f"{CLIP}.flac")
    return resample_pcm16(pcm, rate, RATE)


def resample_pcm16(pcm: bytes, rate: int, to: int) -> bytes:
    audio = torch.from_numpy(np.frombuffer(pcm, "<i2").astype(np.float32))
    resampled = torchaudio.functional.resample(audio, rate, to).round().clamp(-32768, 32767)
    return resampled.to(torch.int16).numpy().tobytes()


def drive(realtime: OpenAIRealtimeProtocol, pcm: bytes, cuts: list[int], commits: set[int]
          ) -> tuple[list[dict], list[str]]:
    """Append pcm cut at `cuts` (byte offsets), committing after the pieces in `commits`; run the protocol's commands
    through a session on the fake engine; its messages (done() included) and the session's final texts."""
    session = None
    messages: list[dict] = []
    finals: list[str] = []
    bounds = [0, *sorted(set(cuts)), len(pcm)]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        commands = append(realtime, pcm[a:b]) + (send(realtime, "input_audio_buffer.commit") if k in commits else [])
        for command in commands:
            if session is None and isinstance(command, Audio):
                session = Session.for_engine(FakeEngine(), realtime.sample_rate, realtime.silence_s, realtime.speech)
            if isinstance(command, Audio):
                events = session.feed(command.pcm)
            elif isinstance(command, Flush):
                events = session.flush()
            else:
                messages.append(json.loads(command.text))
                continue
            finals += [e.text for e in events if isinstance(e, Final)]
            messages += emitted(realtime, *events)
    events = session.end()
    finals += [e.text for e in events if isinstance(e, Final)]
    messages += emitted(realtime, *events)
    return messages + [json.loads(m) for m in realtime.done(0.0)], finals


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(cuts=st.lists(st.integers(0, 240_000), max_size=30), commits=st.sets(st.integers(0, 30), max_size=3),
       manual=st.booleans(), silence_ms=st.sampled_from([200, 500, 1000]))
def test_deltas_concatenate_to_a_prefix_of_the_completed_transcript(cuts, commits, manual, silence_ms):
    """Whatever the audio cuts and commits: each item's deltas concatenate to a prefix of its one completed
    transcript, every committed item completes, and the completed transcripts hold every word the session said."""
    realtime = protocol()
    update(realtime, turn_detection=None if manual else {"type": "server_vad", "silence_duration_ms": silence_ms})
    messages, finals = drive(realtime, clip_pcm16(), [c * 2 for c in cuts], commits)
    completed = check_items(messages)
    committed = [m["item_id"] for m in of_type(messages, "input_audio_buffer.committed")]
    assert sorted(committed) == sorted(completed) and len(set(committed)) == len(committed)
    assert " ".join(completed[item] for item in committed).split() == " ".join(finals).split()
    assert finals


# -- a server on the fake engine -----------------------------------------------------------------


def run(coroutine):
    return asyncio.run(coroutine)


async def realtime_client(url: str, pcm: bytes, key: str = "sesame", chunk_s: float = 0.1, pace: float = FAST_PACE,
                          before: list[dict] | None = None, commit: bool = False, after: list[dict] | None = None,
                          settle_s: float = 2.0) -> list[dict]:
    """A plain WebSocket client: session.update (server_vad), the events in `before`, pcm16 24 kHz appends at
    `pace` x real time, a commit if asked, the events in `after`; the server's events until it goes quiet for
    settle_s."""
    messages: list[dict] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(f"{url}{PATH}", additional_headers=headers, max_size=None) as ws:
        messages.append(json.loads(await ws.recv()))
        for event in [{"type": "session.update", "session": {"type": "transcription"}}, *(before or [])]:
            await ws.send(json.dumps(event))
        frame = int(RATE * chunk_s) * 2
        started = time.monotonic()
        for k, offset in enumerate(range(0, len(pcm), frame)):
            audio = base64.b64encode(pcm[offset : offset + frame]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            await asyncio.sleep(max(0.0, started + (k + 1) * chunk_s / pace - time.monotonic()))
        if commit:
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        for event in after or []:
            await ws.send(json.dumps(event))
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), settle_s)))
        except TimeoutError:
            pass
    return messages


def test_server_streams_items_and_bad_events_do_not_end_the_stream(make_fake_server, clip_24k):
    """On the fake engine: session.created first, bad events answered by error events, then items for the speech."""
    server = make_fake_server(tokens=("sesame",))
    bad = [{"type": "nope", "event_id": "e1"}, {"type": "input_audio_buffer.append", "audio": "%%%"}]
    messages = run(realtime_client(server.url, clip_24k, before=bad, commit=True))
    assert messages[0]["type"] == "session.created"
    assert messages[1]["type"] == "session.updated"
    errors = of_type(messages, "error")
    assert [e["error"]["code"] for e in errors] == ["invalid_event", "invalid_value"]
    assert errors[0]["error"]["event_id"] == "e1"
    completed = check_items(messages)
    assert completed and all(t.split()[0] == "w0" for t in completed.values() if t)
    assert len(of_type(messages, "input_audio_buffer.speech_started")) == len(completed)


def test_appends_are_not_rate_limited_but_control_messages_are(make_fake_server, clip_24k):
    """At the default text message rate: 100 ms appends, 16 a second, lose no audio (the one turn's transcript covers
    the whole clip), while a burst of session.update messages gets rate_limited."""
    server = make_fake_server(tokens=("sesame",))
    manual = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "turn_detection": None}}}}
    burst = [{"type": "session.update", "session": {"type": "transcription"}}] * 12
    messages = run(realtime_client(server.url, clip_24k, before=[manual], commit=True, after=burst))
    (completed,) = of_type(messages, COMPLETED)
    duration_s = len(clip_24k) / 2 / RATE
    assert completed["usage"]["seconds"] == pytest.approx(duration_s, abs=1e-3)
    assert completed["transcript"].split() == [f"w{k}" for k in range(int(duration_s / WORD_S))]
    errors = of_type(messages, "error")
    assert errors and all(e["error"]["code"] == "rate_limited" for e in errors)
    assert errors[0]["error"]["type"] == "rate_limit_error"
    assert len(of_type(messages, "session.updated")) < 2 + len(burst)


def test_server_refuses_a_wrong_key_and_an_expired_secret_before_the_upgrade(make_fake_server):
    """A wrong key or an expired minted secret: HTTP 401 with OpenAI's error body, before any audio."""
    server = make_fake_server(tokens=("sesame",))
    expired, _ = server.app.tokens.mint(server.app.tokens.authenticate("sesame"), 1, time.time() - 10)
    for key in ("wrong", expired):
        with pytest.raises(InvalidStatus) as refused:
            run(realtime_client(server.url, b"", key=key))
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
    live, _ = server.app.tokens.mint(server.app.tokens.authenticate("sesame"), 60, time.time())
    assert run(realtime_client(server.url, b"", key=live, settle_s=0.2))[0]["type"] == "session.created"


# -- the official SDK on the real model (slow) ---------------------------------------------------


@pytest.fixture
def native_text(server, samples):
    """The native protocol's finals for the clip, at real-time pace."""
    pcm, rate = read_pcm16(samples[CLIP]["path"])
    outcome = run(stream(server.url, pcm, rate, pace=1.0))
    assert outcome.close_code == 1000
    return " ".join(outcome.text.split())


def sdk_transcribe(server, pcm: bytes, turn_detection: dict | None, n_words: int) -> list:
    """The official openai SDK, unmodified (base_url and api_key only): session.update, base64 pcm16 24 kHz appends
    at real-time pace, a commit without turn detection; its events until completed transcripts hold n_words words
    (the connection is closed after TIMEOUT_SDK_S whatever came)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.http}/v1", api_key="sesame")
    events = []
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        watchdog = threading.Timer(TIMEOUT_SDK_S, connection.close)
        watchdog.start()
        connection.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": turn_detection}}})
        chunk = RATE // 5 * 2  # 200 ms
        silence = bytes(RATE * 2) if turn_detection else b""  # 1 s, so that server_vad ends the last turn
        started = time.monotonic()
        for k, offset in enumerate(range(0, len(pcm + silence), chunk)):
            piece = (pcm + silence)[offset : offset + chunk]
            connection.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
            time.sleep(max(0.0, started + (k + 1) * 0.2 - time.monotonic()))
        if turn_detection is None:
            connection.input_audio_buffer.commit()
        try:
            while sum(len(e.transcript.split()) for e in of_kind(events, COMPLETED)) < n_words:
                events.append(connection.recv())
        finally:
            watchdog.cancel()
    return events


def of_kind(events: list, kind: str) -> list:
    return [e for e in events if e.type == kind]


@pytest.mark.parametrize("turn_detection", [{"type": "server_vad", "silence_duration_ms": 500}, None],
                         ids=["server-vad", "manual"])
def test_openai_sdk_gets_the_native_finals(make_server, samples, native_text, turn_detection):
    """The unmodified openai SDK 3.51.0 streams the clip at 24 kHz: deltas, and completed transcripts that are the
    native protocol's finals (server_vad: the same segments), or nearly (client commits: the clip is one segment)."""
    server = make_server(tokens=("sesame",))
    pcm, rate = read_pcm16(samples[CLIP]["path"])
    events = sdk_transcribe(server, resample_pcm16(pcm, rate, RATE), turn_detection, len(native_text.split()))
    assert events[0].type == "session.created" and events[1].type == "session.updated"
    messages = [e.to_dict() for e in events]
    completed = check_items(messages)
    assert of_kind(events, "conversation.item.input_audio_transcription.delta")
    text = " ".join(" ".join(completed.values()).split())
    if turn_detection is None:  # one turn is one segment, where the native stream had one per pause: near enough
        assert word_errors(native_text, text).wer < 0.1, (text, native_text)
    else:  # the same words; a comma may differ, as the SDK's audio is resampled to 24 kHz (int8 layers round
        assert word_errors(native_text, text).wer == 0, (text, native_text)  # differently on a different signal)


@pytest.mark.parametrize("message", [
    '{"type": "transcription_session.update", "session": {"input_audio_format": [1]}}',
    '{"type": "session.update", "session": {"audio": {"input": {"format": {"type": []}}}}}',
    '{"type": "session.update", "session": {"audio": {"input": {"format": {"type": {"a": 1}}}}}}',
])
def test_unhashable_formats_get_an_error_event(message):
    protocol = OpenAIRealtimeProtocol(Request("/v1/realtime", {"intent": "transcription"}, {}, ()), Options())
    assert isinstance(protocol.handshake(TokenTable.load()), Accept)
    replies = protocol.receive_text(message)
    assert [json.loads(r.text)["type"] for r in replies if isinstance(r, Reply)] == ["error"]
