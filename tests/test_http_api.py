"""The HTTP API on the stream port, driven by OpenAI's own SDK and by raw sockets: OpenAI's audio transcriptions and
models, the minting of short-lived secrets, and every refusal before a byte of body is read. The fast tier runs on
the fake engine; the real model's captions are in the slow tests at the end."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from captioner.server.auth import Grant
from captioner.stream.batching import BatchPolicy, Due
from captioner.stream.config import StreamConfig
from captioner.stream.jobs import FinalJob, UpdateJob

KEY = "test-key"


SPEECH = Path(__file__).resolve().parents[1] / "samples" / "two_cities.flac"


def wav(seconds: float) -> bytes:
    """The first seconds of a sample recording of speech, as a 16-bit WAV file at its own rate."""
    pcm, rate = sf.read(SPEECH, dtype="float32", frames=int(seconds * sf.info(SPEECH).samplerate))
    out = io.BytesIO()
    sf.write(out, pcm, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture
def api(make_fake_server):
    return make_fake_server(tokens=(KEY,))


@pytest.fixture
def client(api):
    return openai.OpenAI(base_url=f"{api.http}/v1", api_key=KEY, max_retries=0)


def raw(port: int, data: bytes, read_s: float = 5.0) -> bytes:
    """Send bytes, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def head(path: str, length: int, key: str = KEY, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


# -- models --------------------------------------------------------------------------------------


def test_models_list_the_served_model_and_its_aliases(client):
    ids = [model.id for model in client.models.list()]
    assert ids[0] == "fake" and "whisper-1" in ids and "gpt-4o-transcribe" in ids
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("davinci")
    assert error.value.code == "model_not_found"


# -- transcriptions through the SDK (fake engine) ------------------------------------------------


def test_every_response_format(client):
    audio = wav(6.0)
    plain = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio))
    assert plain.text.startswith("w0 w1")
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio),
                                                 response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.text == plain.text and abs(verbose.duration - 6.0) < 0.01
    assert [w.word for w in verbose.words] == plain.text.split() and verbose.segments
    assert all(0 <= w.start <= w.end <= 6.0 for w in verbose.words)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio), response_format="srt")
    assert srt.startswith("1\n00:00:") and "-->" in srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio), response_format="vtt")
    assert vtt.startswith("WEBVTT")
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio), response_format="text")
    assert text.strip() == plain.text
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", audio), stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done" and events[-1].text == plain.text
    assert "".join(e.delta for e in events[:-1]) == plain.text


def test_bad_requests_get_openai_errors(client, api):
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(model="whisper-1", file=("a.txt", b"not audio at all"))
    assert error.value.code == "invalid_file"
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(1.0)), response_format="xml")
    assert error.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(model="dall-e-3", file=("a.wav", wav(1.0)))
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):  # an English-only model does not translate
        client.audio.translations.create(model="whisper-1", file=("a.wav", wav(1.0)))
    status, body = _post(api, "/v1/audio/transcriptions", b"--b\r\nbroken", "multipart/form-data; boundary=b")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, body = _post(api, "/v1/audio/transcriptions", b"{}", "application/json")
    assert status == 400


def _post(api, path: str, body: bytes, content_type: str, key: str = KEY) -> tuple[int, bytes]:
    response = httpx.post(api.http + path, content=body, headers={"Authorization": f"Bearer {key}",
                                                                  "Content-Type": content_type})
    return response.status_code, response.content


# -- refusals before the body ----------------------------------------------------------------------


def test_wrong_key_is_refused_before_the_body(api):
    answer = raw(api.app.port, head("/v1/audio/transcriptions", 10_000_000, key="wrong"))
    assert answer.startswith(b"HTTP/1.1 401") and b"invalid_api_key" in answer


def test_a_body_over_the_upload_limit_is_413_before_it_is_read(make_fake_server):
    server = make_fake_server(tokens=(KEY,), max_upload_bytes=100_000)
    answer = raw(server.app.port, head("/v1/audio/transcriptions", 100_001))
    assert answer.startswith(b"HTTP/1.1 413")
    # chunked, no length: refused once the body passes the limit
    chunked = head("/v1/audio/transcriptions", 0).replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
    answer = raw(server.app.port, chunked + b"%x\r\n" % 150_000 + b"x" * 150_000 + b"\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")


def test_expect_100_continue_and_a_slow_upload(make_fake_server):
    server = make_fake_server(tokens=(KEY,), upload_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", server.app.port), timeout=5) as s:
        s.sendall(head("/v1/audio/transcriptions", 1000, extra="Expect: 100-continue\r\n"))
        assert s.recv(100).startswith(b"HTTP/1.1 100")
        s.sendall(b"--b\r\n")  # and then nothing
        answer = s.recv(1000)
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_slow_head_has_the_handshake_timeout(make_fake_server):
    server = make_fake_server(tokens=(KEY,), handshake_timeout_s=0.5)
    started = time.monotonic()
    answer = raw(server.app.port, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 4


def test_head_requests_and_oversized_minting_bodies(api):
    answer = raw(api.app.port, b"HEAD /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405") and answer.count(b"HTTP/1.1") == 1 and answer.endswith(b"\r\n\r\n")
    big = head("/v1/realtime/client_secrets", 2_000_000).replace(b"multipart/form-data; boundary=b",
                                                                 b"application/json")
    assert raw(api.app.port, big).startswith(b"HTTP/1.1 413")
    for k in range(3):  # one metric series for every model id
        httpx.get(f"{api.http}/v1/models/x{k}/y")
    series = [line for line in httpx.get(api.http + "/metrics").text.splitlines()
              if line.startswith("captioner_http_requests_total{") and "models/" in line]
    assert len(series) == 1 and 'endpoint="/v1/models/{id}"' in series[0]


def test_unknown_paths_methods_and_garbage(api):
    assert raw(api.app.port, head("/v1/chat/completions", 0)).startswith(b"HTTP/1.1 404")
    assert raw(api.app.port, head("/v1/audio/transcriptions", 0).replace(b"POST", b"PUT", 1)) \
        .startswith(b"HTTP/1.1 405")
    assert raw(api.app.port, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad header\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(api.app.port, head("/v1/audio/transcriptions", 0).replace(b"127.0.0.1", b"evil.example", 1)) \
        .startswith(b"HTTP/1.1 403")


def test_files_beyond_max_file_jobs_get_429(make_fake_server):
    server = make_fake_server(delay_s=0.05, tokens=(KEY,), max_file_jobs=1)
    client = openai.OpenAI(base_url=f"{server.http}/v1", api_key=KEY, max_retries=0)
    first = threading.Thread(target=client.audio.transcriptions.create,
                             kwargs={"model": "whisper-1", "file": ("a.wav", wav(20.0))})
    first.start()
    deadline = time.monotonic() + 10
    while server.app.api.files == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError):
        client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav(1.0)))
    first.join()
    assert client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav(3.0))).text


def test_cors_preflight_for_an_allowed_origin(make_fake_server):
    server = make_fake_server(tokens=(KEY,), allowed_origins=("https://app.example",))
    preflight = httpx.options(server.http + "/v1/audio/transcriptions", headers={"Origin": "https://app.example"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(server.http + "/v1/audio/transcriptions", headers={"Origin": "https://evil.example"})
    assert other.status_code == 403


def test_uploads_over_tls(make_fake_server, tmp_path):
    """A request with a body is handed over to HTTP after the TLS handshake as before it."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = make_fake_server(tokens=(KEY,), certfile=str(cert), keyfile=str(key))
    client = openai.OpenAI(base_url=f"{server.http}/v1", api_key=KEY, max_retries=0,
                           http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(cert))))
    assert server.http.startswith("https://")
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(3.0))).text.startswith("w0")


# -- short-lived secrets ---------------------------------------------------------------------------


def test_a_minted_secret_works_until_it_expires(api, client):
    minted = httpx.post(api.http + "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                        json={"expires_after": {"anchor": "created_at", "seconds": 60}}).json()
    secret = minted["value"]
    assert secret.startswith("ek_") and minted["expires_at"] > time.time() + 50
    with_secret = openai.OpenAI(base_url=f"{api.http}/v1", api_key=secret, max_retries=0)
    assert with_secret.models.list().data
    asyncio.run(_native_stream(api.url + f"/v1/stream?token={secret}"))
    # a secret may not mint secrets, which would outlive it
    status, body = _post(api, "/v1/realtime/client_secrets", b"{}", "application/json", key=secret)
    assert status == 401
    token = httpx.get(api.http + "/v3/token?expires_in_seconds=30", headers={"Authorization": KEY}).json()
    assert token["expires_in_seconds"] == 30
    asyncio.run(_native_stream(api.url + f"/v1/stream?token={token['token']}"))
    expired, _ = api.app.tokens.mint(Grant(KEY), 60, now=time.time() - 61)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api.http}/v1", api_key=expired, max_retries=0).models.list()
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(_native_stream(api.url + f"/v1/stream?token={expired}"))
    assert refused.value.response.status_code == 401
    assert httpx.get(api.http + "/v3/token?expires_in_seconds=100000", headers={"Authorization": KEY}) \
        .status_code == 400


async def _native_stream(url: str) -> None:
    async with connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"


# -- files never make live streams late (the policy) -----------------------------------------------


def test_background_jobs_run_only_when_no_live_stream_has_work():
    policy = BatchPolicy(StreamConfig())
    live = Due("live", UpdateJob.__new__(UpdateJob), late_s=0.0)
    file = Due("file", FinalJob.__new__(FinalJob), late_s=30.0, background=True)
    assert [d.key for p in policy.passes([file, live], behind=False) for d in p.due] == ["live"]
    assert [d.key for p in policy.passes([file], behind=False) for d in p.due] == ["file"]


def test_draining_refuses_new_uploads(make_fake_server):
    server = make_fake_server(tokens=(KEY,))
    server.app.draining = True
    try:
        answer = raw(server.app.port, head("/v1/audio/transcriptions", 10))
    finally:
        server.app.draining = False
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in answer


# -- the real model ----------------------------------------------------------------------------------


def test_a_file_through_the_sdk_says_what_the_live_stream_says(server, samples):
    """The file endpoint's finals (decoded finals only, no partial updates) against the native stream's."""
    from client import read_pcm16, stream

    from captioner.tools.evaluate import word_errors

    clip = samples["LJ001-0001"]
    pcm, rate = read_pcm16(clip["path"])
    live = asyncio.run(stream(server.url, pcm, rate, pace=4.0)).text
    client = openai.OpenAI(base_url=f"{server.http}/v1", api_key="any", max_retries=0)
    with open(clip["path"], "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word"])
    assert word_errors(live, verbose.text).wer <= 0.05, (live, verbose.text)
    assert word_errors(clip["text"], verbose.text).wer <= 0.1
    assert verbose.language == "english" and abs(verbose.duration - 9.655) < 0.05
    assert verbose.words[0].start < 0.5 and verbose.words[-1].end > 8.0



def test_a_file_is_cut_at_the_longest_segment(make_fake_server):
    """A file's stream takes the few partial updates that cut long speech at max_segment_s (else its audio past
    the 30 s window would be lost)."""
    server = make_fake_server(tokens=(KEY,), max_segment_s=3.0)
    client = openai.OpenAI(base_url=f"{server.http}/v1", api_key=KEY, max_retries=0)
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(12.0)),
                                                 response_format="verbose_json")
    spans = [(s.start, s.end) for s in verbose.segments]
    assert len(spans) >= 3 and all(end - start <= 1.5 * 3.0 for start, end in spans), spans  # (7.4 s uncut)
