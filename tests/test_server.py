"""The WebSocket service: a real server on a loopback port, fed real speech. Its limits, refusals and errors run on a
fake engine (make_fake_server: no model, the fast tier); the captions end to end run on the real model (slow)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from client import Outcome, collect, every_final, raw_exchange, read_pcm16, speaker_of_turns, stream, upgrade_request
from support import FAKE_MODEL, free_port, get, start_serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captioner.server.protocols import PROTOCOLS, NativeProtocol
from captioner.server.protocols.base import Command
from captioner.tools.evaluate import word_errors

FAST_PACE = 16.0  # x real time: a stream beside the scenario of a test on the fake engine, which keeps up with it


def run(coroutine):
    return asyncio.run(coroutine)


def test_native_protocol_end_to_end(server, samples):
    """ready first; partials and finals; done with the audio length; close 1000."""
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    outcome = run(stream(server.url, pcm, rate, pace=4.0))
    ready = outcome.messages[0]
    assert ready["type"] == "ready" and ready["model"] == "tiny.en" and ready["sample_rate"] == rate
    assert outcome.of_type("partial") and outcome.finals
    assert outcome.messages[-1] == {"type": "done", "audio_s": pytest.approx(9.655, abs=0.01)}
    assert outcome.close_code == 1000
    assert word_errors(samples["LJ001-0001"]["text"], outcome.text).wer < 0.15
    segments = [m["segment"] for m in outcome.finals]
    assert segments == sorted(set(segments))  # each final exactly once
    partial = outcome.of_type("partial")[0]
    assert set(partial) >= {"type", "segment", "text", "stable", "start", "end"}


def test_four_concurrent_sessions_get_their_own_text(server, samples):
    """Four different clips at once: each stream gets its own transcript."""
    names = ["LJ001-0001", "1688-142285-0000", "two_cities", "LJ001-0001"]
    clips = [read_pcm16(samples[n]["path"], seconds=15) for n in names]

    async def all_streams():
        return await asyncio.gather(*(stream(server.url, pcm, rate, pace=3.0) for pcm, rate in clips))

    outcomes = run(all_streams())
    assert all(o.close_code == 1000 for o in outcomes)
    assert "printing" in outcomes[0].text.lower() and "printing" in outcomes[3].text.lower()
    assert "blood" in outcomes[1].text.lower() and "steel" in outcomes[1].text.lower()
    assert "best of times" in outcomes[2].text.lower()
    assert len({o.messages[0]["session"] for o in outcomes}) == 4


async def _send_and_read(url: str, *messages, query: str = "sample_rate=16000", **kw) -> Outcome:
    outcome = Outcome()
    async with connect(f"{url}/v1/stream?{query}", **kw) as ws:
        reader = asyncio.create_task(collect(ws, outcome))
        try:
            for message in messages:
                await ws.send(message)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(reader, 30)
    return outcome


@pytest.mark.parametrize(
    "messages, code, slug",
    [
        (["hello, garbage"], 1003, "bad_message"),
        ([json.dumps({"type": "jump"})], 1003, "bad_message"),
        ([json.dumps([1, 2, 3])], 1003, "bad_message"),
        ([b"\x00" * 3201], 1003, "bad_audio"),
        ([b""], 1003, "bad_audio"),
    ],
    ids=["text-garbage", "wrong-type", "wrong-shape", "odd-bytes", "empty-frame"],
)
def test_bad_messages_close_1003(fake_server, messages, code, slug):
    """Malformed messages get an error message with their code, then the documented close."""
    outcome = run(_send_and_read(fake_server.url, *messages))
    errors = outcome.of_type("error")
    assert errors and errors[-1]["code"] == slug and errors[-1]["message"]
    assert outcome.close_code == code


def test_huge_frame_closes_1009(make_fake_server):
    """A frame over max_frame_bytes: error too_big, close 1009."""
    server = make_fake_server(max_frame_bytes=64_000)
    outcome = run(_send_and_read(server.url, b"\x00\x00" * 40_000))
    assert outcome.of_type("error")[-1]["code"] == "too_big"
    assert outcome.close_code == 1009


def refused(url: str, query: str = "sample_rate=16000", **kw):
    """The HTTP response that refused an upgrade to /v1/stream."""
    with pytest.raises(InvalidStatus) as refusal:
        run(_send_and_read(url, query=query, **kw))
    return refusal.value.response


@pytest.mark.parametrize(
    "query, slug",
    [("sample_rate=4000", "bad_sample_rate"), ("sample_rate=96000", "bad_sample_rate"),
     ("sample_rate=abc", "bad_sample_rate"), ("sample_rate=16000&encoding=mp3", "bad_encoding"),
     ("sample_rate=16000&language=fr", "bad_language")],
)
def test_bad_parameters_are_refused_with_400(fake_server, query, slug):
    """Bad parameters are refused before the upgrade: HTTP 400 with the error as JSON."""
    response = refused(fake_server.url, query)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["code"] == slug


def test_tokens(make_fake_server, tmp_path, samples):
    """With tokens set, a missing or wrong token is refused with 401 before the upgrade; a header or ?token= works."""
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-one\nsecret-two\n")
    server = make_fake_server(tokens_file=str(tokens))
    missing = refused(server.url)
    assert missing.status_code == 401 and json.loads(missing.body)["code"] == "unauthorized"
    wrong = refused(server.url, "sample_rate=16000&token=nope")
    assert wrong.status_code == 401 and json.loads(wrong.body)["message"] == "wrong token"
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=3)
    header = run(stream(server.url, pcm, rate, additional_headers={"Authorization": "Bearer secret-two"}))
    assert header.close_code == 1000 and header.messages[0]["type"] == "ready"
    query = run(stream(server.url, pcm, rate, query="token=secret-one"))
    assert query.close_code == 1000


def test_max_sessions_refuses_at_the_handshake_with_503(make_fake_server, samples):
    """Over the limit a stream is refused before the upgrade (HTTP 503, Retry-After), so that a load
    balancer can try another replica; the open stream is not disturbed."""
    server = make_fake_server(max_sessions=1)
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=4)

    async def two():
        opened = asyncio.Event()
        first = asyncio.create_task(stream(server.url, pcm, rate, pace=FAST_PACE, opened=opened))
        await opened.wait()
        with pytest.raises(InvalidStatus) as refused:
            await _send_and_read(server.url, b"\x00\x00" * 1600)
        return await first, refused.value.response

    first, response = run(two())
    assert every_final(first, 4.0) and first.text
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert json.loads(response.body) == {"type": "error", "code": "overloaded", "message": "at the limit of 1 streams"}
    metrics = urllib.request.urlopen(server.http + "/metrics").read().decode()
    assert 'captioner_rejections_total{reason="overloaded"} 1.0' in metrics


def test_idle_timeout_finalises_then_closes_1001(make_fake_server, samples):
    """No audio for idle_timeout_s: everything heard is finalised (finals, done with all the audio), then 1001."""
    server = make_fake_server(idle_timeout_s=1.0)
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    outcome = run(stream(server.url, pcm, rate, end=False))
    finals = [f for f in outcome.finals if f["words"]]
    assert finals and finals[-1]["end"] > 8.0  # the last words of the clip's 9.7 s
    assert outcome.messages[-1] == {"type": "done", "audio_s": pytest.approx(9.655, abs=0.01)}
    assert outcome.close_code == 1001 and outcome.close_reason == "idle timeout"


def test_max_session_length(make_fake_server, samples):
    """Past max_session_s of audio: what was heard is finalised, then close 1008."""
    server = make_fake_server(max_session_s=3.0)
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    outcome = run(stream(server.url, pcm, rate))
    assert outcome.close_code == 1008 and outcome.close_reason == "maximum session length"
    assert outcome.text and outcome.messages[-1]["type"] == "done"


def test_backpressure_loses_nothing(make_fake_server, samples):
    """Audio sent far faster than real time is read only as fast as the model goes, and nothing is lost."""
    server = make_fake_server(max_backlog_s=1.0, delay_s=0.05)
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=10)
    # the server does not read a client that is ahead, so it sees no ping either: the client sends none
    started = time.monotonic()
    outcome = run(stream(server.url, pcm, rate, chunk_ms=250, ping_interval=None))
    assert every_final(outcome, 10.0), outcome.messages[-2:]
    passes = len(server.app.engine.final_beams)
    assert time.monotonic() - started >= passes * 0.05  # as fast as the model went, not as fast as it was sent


def test_hard_backlog_limit_closes_1013(make_fake_server):
    """A single frame far beyond the backlog limit is refused with 1013."""
    server = make_fake_server(max_backlog_s=1.0, max_hard_backlog_s=2.0)
    outcome = run(_send_and_read(server.url, b"\x01\x00" * 16000 * 10))
    assert outcome.of_type("error")[-1]["code"] == "backlog" and outcome.close_code == 1013


def test_vanishing_client_does_not_disturb_others(fake_server, samples):
    """A client gone without a close frame mid-stream: another stream gets every final, and no stream is left."""
    server = fake_server
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])

    async def scenario():
        other = asyncio.create_task(stream(server.url, pcm, rate, pace=FAST_PACE))
        ws = await connect(f"{server.url}/v1/stream?sample_rate={rate}")
        await ws.recv()
        for start in range(0, len(pcm) // 2, 3200):
            await ws.send(pcm[start : start + 3200])
        ws.transport.abort()  # gone without a close frame
        return await other

    other = run(scenario())
    assert every_final(other, 9.655)
    def open_sessions() -> str:
        return get(server.http + "/metrics")[1].split("\ncaptioner_active_sessions ")[1].split()[0]

    for _ in range(100):
        if open_sessions() == "0.0":
            break
        time.sleep(0.1)
    assert open_sessions() == "0.0"  # the scheduler forgot the stream


def test_origin_check(make_fake_server):
    """Browsers from other origins are refused (403) unless allowed; the server's own page is allowed."""
    server = make_fake_server()
    response = refused(server.url, origin="http://evil.example")
    assert response.status_code == 403 and response.body == b"forbidden_origin: browser origin not allowed\n"
    own = run(_send_and_read(server.url, json.dumps({"type": "end"}), origin=f"http://127.0.0.1:{server.app.port}"))
    assert own.close_code == 1000
    allowed = make_fake_server(allowed_origins="https://captions.example")
    ok = run(_send_and_read(allowed.url, json.dumps({"type": "end"}), origin="https://captions.example"))
    assert ok.close_code == 1000


def test_health_ready_metrics(fake_server, samples):
    """/healthz, /readyz (with the model's name) and /metrics, with every metric a stream moves."""
    server = fake_server
    assert urllib.request.urlopen(f"{server.http}/healthz").read() == b"ok\n"
    ready = json.loads(urllib.request.urlopen(f"{server.http}/readyz").read())
    assert ready["ready"] is True and ready["model"] == FAKE_MODEL.name
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=4)
    run(stream(server.url, pcm, rate, pace=8.0))  # paced: a client far ahead of the model gets no partials
    metrics = urllib.request.urlopen(f"{server.http}/metrics").read().decode()
    for name in ["captioner_active_sessions", "captioner_audio_seconds_total", 'captioner_captions_total{kind="final"}',
                 'captioner_caption_lag_seconds_bucket{kind="final"', "captioner_scheduler_queue_depth",
                 'captioner_batch_size_bucket{kind="partial"', 'captioner_inference_seconds_count{kind="final"}',
                 'captioner_build_info{checksum="', "captioner_rejections_total"]:
        assert name in metrics, name


def test_readyz_is_503_while_draining(fake_server):
    """/readyz answers 503 while the server drains."""
    server = fake_server
    server.app.draining = True
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server.http}/readyz")
    error.value.close()
    assert error.value.code == 503
    server.app.draining = False


def test_drain_finalises_open_streams_then_closes_1001_and_refuses_new_ones(make_fake_server, samples):
    """app.stop() (what SIGTERM starts): an open stream gets the finals of all the audio it sent, done, then close
    1001; while the server drains, an upgrade is refused with 503 draining and /readyz answers 503."""
    server = make_fake_server(delay_s=0.2)  # a slow model: the drain lasts a few passes
    port = server.app.port
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=4)

    async def scenario():
        outcome = Outcome()
        async with connect(f"{server.url}/v1/stream?sample_rate={rate}") as ws:
            reader = asyncio.create_task(collect(ws, outcome))
            await ws.send(pcm)  # and no end
            while not outcome.of_type("partial"):  # the server has the audio
                await asyncio.sleep(0.01)
            stopped = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.app.stop(), server.loop))
            while not server.app.draining:
                await asyncio.sleep(0.001)
            refusal = await raw_exchange(port, upgrade_request(port, "/v1/stream"))
            ready = await asyncio.to_thread(get, f"{server.http}/readyz")
            await reader
            await stopped
        return outcome, refusal, ready

    outcome, (status, _, body), (ready, _) = run(scenario())
    assert (outcome.close_code, outcome.close_reason) == (1001, "server shutting down")
    assert outcome.finals and outcome.messages[-1] == {"type": "done", "audio_s": 4.0}
    assert (status, json.loads(body)["code"], ready) == (503, "draining", 503)


def test_tls_with_a_self_signed_certificate(make_fake_server, tmp_path, samples):
    """With --certfile and --keyfile, streams and the operations endpoints are served over TLS."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = make_fake_server(certfile=str(cert), keyfile=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=3)
    outcome = run(stream(server.url, pcm, rate, ssl=context))
    assert server.url.startswith("wss://") and outcome.close_code == 1000
    assert urllib.request.urlopen(f"{server.http}/healthz", context=context).read() == b"ok\n"


def test_event_loop_answers_pings_while_eight_sessions_stream(server, samples):
    """The loop never blocks on the model: a ping is answered within 50 ms while 8 streams run."""
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=12)

    async def scenario():
        streams = [asyncio.create_task(stream(server.url, pcm, rate, pace=1.0)) for _ in range(8)]
        await asyncio.sleep(2.0)
        worst = 0.0
        async with connect(f"{server.url}/v1/stream?sample_rate=16000") as ws:
            await ws.recv()
            for _ in range(20):
                started = time.perf_counter()
                await (await ws.ping())
                worst = max(worst, time.perf_counter() - started)
                await asyncio.sleep(0.2)
            await ws.send(json.dumps({"type": "end"}))
        await asyncio.gather(*streams)
        return worst

    assert run(scenario()) < 0.05


@pytest.mark.slow  # it loads the model or starts servers itself
def test_sigterm_drains_without_losing_finals(tmp_path, samples):
    """SIGTERM mid-stream: the client gets every final of what it sent, then close 1001; the process exits."""
    process, port = start_serve()
    try:
        pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])

        async def scenario():
            task = asyncio.create_task(stream(f"ws://127.0.0.1:{port}", pcm, rate, pace=1.0, end=False))
            await asyncio.sleep(6.5)
            process.send_signal(signal.SIGTERM)
            return await task

        outcome = run(scenario())
        assert process.wait(timeout=40) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert outcome.close_code == 1001
    assert outcome.messages[-1]["type"] == "done"
    assert "present" in outcome.text.lower()  # said about 4 s in: finalised by the drain
    log = process.stderr.read()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(r["message"] == "draining" for r in records)
    assert all(r["model"] == "tiny.en" and r["model_version"] for r in records)
    assert not any("printing" in json.dumps(r).lower() for r in records)  # no transcript text in logs by default


def test_replay_command(server, samples, tmp_path, capsys):
    """`captioner replay` streams a file, prints the finals and writes the caption files."""
    from captioner.tools.cli import main

    assert main(["replay", str(samples["LJ001-0001"]["path"]), "--url", server.url, "--speed", "0",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert word_errors(samples["LJ001-0001"]["text"], printed).wer < 0.15
    assert (tmp_path / "LJ001-0001.srt").read_text().startswith("1\n00:00:0")
    assert (tmp_path / "LJ001-0001.vtt").read_text().startswith("WEBVTT")
    messages = json.loads((tmp_path / "LJ001-0001.json").read_text())["messages"]
    assert messages[0]["type"] == "ready" and messages[-1]["type"] == "done" and "t" in messages[-1]


def test_replay_command_errors_are_one_line(make_fake_server, samples, capsys):
    """A server that is down, or one that refuses the token: one clear line and exit status 1."""
    from captioner.tools.cli import main

    path = str(samples["LJ001-0001"]["path"])
    port = free_port()
    assert main(["replay", path, "--url", f"ws://127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err.startswith(f"captioner: error: cannot connect to ws://127.0.0.1:{port}")
    server = make_fake_server(tokens=("sesame",))
    assert main(["replay", path, "--url", server.url, "--speed", "0", "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert "unauthorized" in err and "Traceback" not in err


def test_finals_decode_greedily_when_the_server_is_behind(make_server, samples):
    """With shed_after_s at 0 the server counts itself behind whenever audio due by real-time pace waits:
    finals are still sent (greedy decoding) and counted in captioner_greedy_finals_total. (A client that
    sends faster than real time is ahead, not behind: the streams go at real-time pace; a sentence twice,
    as the last finals after the end keep the beam. Three streams and one inference thread: audio waits
    while the thread runs another stream's pass.)"""
    server = make_server(shed_after_s=0.0, workers=1)
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    sentence, pause = pcm[: 2 * rate * 4], bytes(2 * rate)  # "Printing, in the only sense ... concerned," and 1 s

    async def three():
        return await asyncio.gather(*(stream(server.url, sentence + pause + sentence, rate, pace=1.0) for _ in "abc"))

    said = "Printing, in the only sense with which we are at present concerned,"
    for outcome in run(three()):
        assert outcome.close_code == 1000
        assert word_errors(f"{said} {said}", outcome.text).wer < 0.15
    metrics = urllib.request.urlopen(server.http + "/metrics").read().decode()
    greedy = next(line for line in metrics.splitlines() if line.startswith("captioner_greedy_finals_total"))
    assert float(greedy.split()[-1]) >= 1


def test_two_inference_threads_serve_any_stream(make_server, samples):
    """With two inference threads, each takes whichever streams' work is due: both run model passes, and
    concurrent streams transcribe as one stream alone does."""
    server = make_server(workers=2)
    threads = server.app.scheduler._threads
    assert len(threads) == 2
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    pcm, said = pcm[: 2 * rate * 4], "Printing, in the only sense with which we are at present concerned,"
    passes: dict[str, int] = {}
    run_pass = server.app.scheduler._run

    def counted(batch):
        name = threading.current_thread().name
        passes[name] = passes.get(name, 0) + 1
        run_pass(batch)

    server.app.scheduler._run = counted

    async def three():
        return await asyncio.gather(*(stream(server.url, pcm, rate, pace=2.0) for _ in range(3)))

    for outcome in run(three()):
        assert outcome.close_code == 1000
        assert word_errors(said, outcome.text).wer < 0.15
    assert sorted(passes) == [thread.name for thread in threads]


def test_diarize_labels_each_final_and_word_with_its_speaker(server, two_voices):
    """diarize=true: S1, S2, S1 for the three turns of two voices; ready says so; a bad flag is refused."""
    pcm, turns = two_voices
    outcome = run(stream(server.url, pcm, 16000, query="diarize=true"))
    assert outcome.close_code == 1000 and outcome.messages[0]["diarize"] is True
    finals = [f for f in outcome.finals if f["words"]]
    assert all(f["speaker"] == max((w["speaker"] for w in f["words"]), key=[w["speaker"] for w in f["words"]].count)
               for f in finals)
    assert speaker_of_turns([w for f in finals for w in f["words"]], turns) == [{"S1"}, {"S2"}, {"S1"}]
    assert not any("speaker" in p for p in outcome.of_type("partial"))  # partials are not labelled
    plain = run(stream(server.url, pcm[: 16000 * 2 * 5], 16000))
    assert plain.messages[0]["diarize"] is False and not any("speaker" in f for f in plain.finals)
    response = refused(server.url, "sample_rate=16000&diarize=maybe")
    assert response.status_code == 400 and json.loads(response.body)["code"] == "bad_parameter"


# -- a bug of the server is the server's: traceback in the log, 1011 or 500 ---------------------------


class BuggyProtocol(NativeProtocol):
    """The native protocol with a planted bug: a text message "boom" raises a KeyError."""

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        if text == "boom":
            raise KeyError("planted in receive_text")
        return super().receive_text(text, throttled)


class BuggyHandshake(NativeProtocol):
    """The native protocol with a planted bug in its handshake."""

    def configure(self) -> None:
        raise ZeroDivisionError("planted in configure")


def planted(caplog, where: str) -> list[logging.LogRecord]:
    """The error-level records whose traceback is the planted bug's."""
    return [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info and where in str(r.exc_info[1])]


def test_a_bug_in_a_protocol_handler_closes_1011_with_its_traceback_in_the_log(make_fake_server, samples, caplog):
    """An exception other than a ProtocolError while handling a message is the server's fault, not the client's:
    what was heard is finalised, then error internal and close 1011; the traceback is in the log. A stream beside
    it is not disturbed."""
    server = make_fake_server(protocols={**PROTOCOLS, "/v1/stream": BuggyProtocol})
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=4)

    async def scenario():
        other = asyncio.create_task(stream(server.url, pcm, rate, pace=FAST_PACE))
        buggy = await _send_and_read(server.url, pcm, "boom", query=f"sample_rate={rate}")
        return buggy, await other

    buggy, other = run(scenario())
    assert (buggy.close_code, buggy.close_reason) == (1011, "internal")
    assert buggy.messages[-1] == {"type": "error", "code": "internal", "message": "internal error"}
    assert buggy.finals and buggy.finals[-1]["end"] > 3.0  # finalised first
    assert every_final(other, 4.0)
    (record,) = planted(caplog, "planted in receive_text")
    assert record.getMessage() == "connection failed" and record.session == buggy.messages[0]["session"]


def test_a_bug_in_a_handshake_is_http_500_with_its_traceback_in_the_log(make_fake_server, caplog):
    """An exception other than a ProtocolError in a handshake: HTTP 500 (details withheld), the traceback in the
    log, and the server goes on serving."""
    server = make_fake_server(protocols={**PROTOCOLS, "/v1/broken": BuggyHandshake})
    port = server.app.port
    status, _, body = run(raw_exchange(port, upgrade_request(port, "/v1/broken?sample_rate=16000")))
    assert (status, body) == (500, b"internal: see the server log\n")
    (record,) = planted(caplog, "planted in configure")
    assert record.getMessage() == "request failed" and record.path == "/v1/broken?sample_rate=16000"
    assert run(_send_and_read(server.url, json.dumps({"type": "end"}))).close_code == 1000
