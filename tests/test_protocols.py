"""The Vosk- and Deepgram-compatible protocols, driven the way their own clients drive them: handshakes and errors
against a server on the fake engine (make_fake_server, the fast tier), captions against the real model (slow)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from client import every_final, read_pcm16, speaker_of_turns, stream
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captioner.tools.evaluate import word_errors

CLIP = "LJ001-0001"
CLIP_S = 9.655
FAST_PACE = 16.0  # x real time: a stream beside a client on the fake engine, which keeps up with it


def run(coroutine):
    return asyncio.run(coroutine)


def normal(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def clip(samples):
    pcm, rate = read_pcm16(samples[CLIP]["path"])
    return pcm, rate, samples[CLIP]["text"]


@pytest.fixture
def native_text(server, clip):
    """The native protocol's finals for the clip, at real-time pace (so that no update is skipped)."""
    pcm, rate, _ = clip
    outcome = run(stream(server.url, pcm, rate, pace=1.0))
    assert outcome.close_code == 1000
    return normal(outcome.text)


# -- Vosk ---------------------------------------------------------------------------------------


async def vosk_client(url: str, pcm: bytes, rate: int | None, frame: int = 8000, words: bool = False,
                      pace: float = 1.0) -> tuple[list[dict], int | None]:
    """As vosk-server's sample clients: config, then frames each followed by reading one answer, then eof."""
    answers = []
    async with connect(url + "/") as ws:
        if rate is not None:
            config = {"sample_rate": rate, **({"words": 1} if words else {})}
            await ws.send(json.dumps({"config": config}))
        started = time.monotonic()
        for k, offset in enumerate(range(0, len(pcm), frame)):
            await ws.send(pcm[offset : offset + frame])
            answers.append(json.loads(await ws.recv()))
            if pace and rate:
                await asyncio.sleep(max(0.0, started + (k + 1) * frame / 2 / rate / pace - time.monotonic()))
        await ws.send('{"eof" : 1}')
        answers.append(json.loads(await ws.recv()))
        try:
            await ws.recv()
        except ConnectionClosed:
            pass
        return answers, ws.close_code


def test_vosk_client_gets_the_native_finals(server, clip, native_text):
    """One answer per frame; the eof answer carries the rest; joined finals equal the native protocol's."""
    pcm, rate, reference = clip
    answers, code = run(vosk_client(server.url, pcm, rate, words=True))
    assert code == 1000
    assert len(answers) == -(-len(pcm) // 8000) + 1
    assert all(set(a) <= {"partial"} or set(a) <= {"text", "result"} for a in answers)
    assert any(a.get("partial") for a in answers)
    text = normal(" ".join(a["text"] for a in answers if a.get("text")))
    assert text == native_text
    assert word_errors(reference, text).wer < 0.15
    words = [w for a in answers for w in a.get("result", [])]
    assert words and set(words[0]) == {"conf", "end", "start", "word"}
    assert all(0 <= w["conf"] <= 1 and w["start"] <= w["end"] for w in words)


def test_vosk_without_config_defaults_to_8000_hz(server, samples):
    """No config: 8 kHz and word lists, as vosk-server's defaults."""
    pcm, rate = read_pcm16(samples["1688-142285-0000"]["path"], seconds=6)
    import numpy as np
    import torch
    import torchaudio

    audio = torch.from_numpy(np.frombuffer(pcm, dtype="<i2").astype(np.float32))
    low = torchaudio.functional.resample(audio, rate, 8000).round().clamp(-32768, 32767).to(torch.int16)
    answers, code = run(vosk_client(server.url, low.numpy().tobytes(), None, pace=0))
    text = " ".join(a["text"] for a in answers if a.get("text"))
    assert code == 1000 and "blood" in text.lower()
    assert any("result" in a for a in answers)


@pytest.mark.parametrize("message", ["not json", '{"config": 5}', '{"what": 1}'],
                         ids=["garbage", "bad-config", "unknown"])
def test_vosk_bad_text_closes_1003(fake_server, message):
    """A Vosk text message that is not JSON, a config that is not an object, or an unknown message: close 1003."""
    async def go():
        async with connect(fake_server.url + "/") as ws:
            await ws.send(message)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert run(go()) == 1003


# -- Deepgram -----------------------------------------------------------------------------------


def deepgram_stream(server, pcm: bytes, rate: int, key: str = "sesame", pace: float = 1.0, **options) -> list:
    """Stream with the official Deepgram Python SDK pointed at the local server, `pace` x real time; returns
    its messages."""
    from deepgram import DeepgramClient
    from deepgram.core.events import EventType
    from deepgram.environment import DeepgramClientEnvironment

    environment = DeepgramClientEnvironment(base=server.http, production=server.url, agent=server.url,
                                            agent_rest=server.http)
    client = DeepgramClient(api_key=key, environment=environment)
    messages: list = []
    closed = threading.Event()
    with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=rate, **options) as connection:
        connection.on(EventType.MESSAGE, messages.append)
        connection.on(EventType.CLOSE, lambda _: closed.set())
        listener = threading.Thread(target=connection.start_listening, daemon=True)
        listener.start()
        frame = rate // 10 * 2
        started = time.monotonic()
        for k, offset in enumerate(range(0, len(pcm), frame)):
            connection.send_media(pcm[offset : offset + frame])
            time.sleep(max(0.0, started + (k + 1) * 0.1 / pace - time.monotonic()))
        connection.send_close_stream()
        assert closed.wait(60), "the server did not close after CloseStream"
        listener.join(10)
    return messages


def test_deepgram_sdk_gets_the_native_finals(make_server, clip):
    server = make_server(tokens=("sesame",))
    pcm, rate, reference = clip
    native = run(stream(server.url, pcm, rate, pace=1.0, additional_headers={"Authorization": "Bearer sesame"}))
    messages = deepgram_stream(server, pcm, rate, interim_results="true", punctuate="true", endpointing=500,
                               utterance_end_ms=1000, vad_events="true")
    kinds = [m.type for m in messages]
    assert kinds[-1] == "Metadata" and "SpeechStarted" in kinds and "UtteranceEnd" in kinds
    results = [m for m in messages if m.type == "Results"]
    finals = [r for r in results if r.is_final]
    assert any(not r.is_final for r in results)  # interim results
    assert finals[-1].speech_final
    text = normal(" ".join(r.channel.alternatives[0].transcript for r in finals))
    # the same words as the native stream's finals: a loaded machine skips stale partials, which may move a
    # comma or a capital in what the stable prefix commits, but not the words
    assert word_errors(native.text, text).errors == 0 and any(mark in text for mark in ".,?!")  # punctuated
    assert word_errors(reference, text).wer < 0.15
    word = finals[0].channel.alternatives[0].words[0]
    assert word.punctuated_word and word.start <= word.end and 0 <= word.confidence <= 1


def test_deepgram_speech_final_at_pauses(server, samples):
    """Short endpointing: a clip with pauses gives several speech_final results."""
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=12)
    messages = deepgram_stream(server, pcm, rate, key="any", endpointing=300, punctuate="true")
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    assert sum(1 for m in finals if m.speech_final) >= 2
    assert "best of times" in " ".join(m.channel.alternatives[0].transcript for m in finals).lower()


def test_deepgram_wrong_key_is_refused_at_the_handshake(make_fake_server, clip):
    """The Deepgram SDK with a wrong key: HTTP 401 before the upgrade."""
    server = make_fake_server(tokens=("sesame",))
    pcm, rate, _ = clip
    with pytest.raises(InvalidStatus) as refused:
        deepgram_stream(server, pcm[:3200], rate, key="wrong")
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize("query", ["encoding=flac", "channels=2", "sample_rate=1000", "interim_results=maybe"])
def test_deepgram_bad_parameters_are_http_400(fake_server, query):
    """Parameters captioner cannot honour are refused before the upgrade: HTTP 400 with Deepgram's error body."""
    async def go():
        async with connect(f"{fake_server.url}/v1/listen?{query}"):
            pass

    with pytest.raises(InvalidStatus) as refused:
        run(go())
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["err_msg"]


def test_deepgram_garbage_text_gets_an_error_and_others_carry_on(fake_server, clip):
    """Text that is not JSON on a Deepgram stream: an Error message (SchemaError); a stream beside it gets every
    final."""
    server = fake_server
    pcm, rate, _ = clip

    async def garbage():
        async with connect(f"{server.url}/v1/listen?encoding=linear16&sample_rate={rate}") as ws:
            await ws.send("{{{")
            return json.loads(await ws.recv())

    async def both():
        return await asyncio.gather(garbage(), stream(server.url, pcm, rate, pace=FAST_PACE))

    error, outcome = run(both())
    assert error["type"] == "Error" and error["variant"] == "SchemaError"
    assert every_final(outcome, CLIP_S)


def test_deepgram_sdk_gets_speaker_numbers_with_diarize(server, two_voices):
    """diarize=True: every word of every final result has Deepgram's 0-based speaker number, and so does the
    alternative; the second voice is speaker 1."""
    pcm, turns = two_voices
    messages = deepgram_stream(server, pcm, 16000, key="any", pace=4.0, diarize="true", punctuate="true")
    finals = [m for m in messages if m.type == "Results" and m.is_final and m.channel.alternatives[0].words]
    words = [w for m in finals for w in m.channel.alternatives[0].words]
    assert words and all(isinstance(w.speaker, int) for w in words)
    assert all(isinstance(getattr(m.channel.alternatives[0], "speaker", None), int) for m in finals)
    assert all(m.metadata.diarize_info.arch == "ge2e-online" for m in finals)
    labelled = speaker_of_turns([{"start": w.start, "end": w.end, "speaker": w.speaker} for w in words], turns)
    assert labelled == [{0}, {1}, {0}]
