"""Live fuzzing of a real server: random and malformed clients on every endpoint beside real-time references.

    python bench/fuzz.py [--duration 300] [--fuzzers 4] [--references 2] [--seed 1] [--out bench/results/fuzz]

Not run in CI. It starts `captioner serve` on a free loopback port (its log captured), then:

1. idle: scrapes the server's resident memory;
2. baseline: `--references` real-time streams of real speech (a `captioner soak`) for `--duration`
   seconds, without the fuzzer;
3. fuzzed: the same streams again, while `--fuzzers` tasks open one random or malformed client
   after another on /v1/stream, / (Vosk), /v1/listen (Deepgram), /v1/realtime (OpenAI) and
   /v3/ws (AssemblyAI): garbage bytes, broken and hostile handshakes, slow handshakes, bad
   parameters and tokens, random text and binary messages, absurd numbers, deep JSON, huge frames,
   flush storms, clients that never read, vanish mid-stream or half-close; and random requests
   to the HTTP API (OpenAI's audio transcriptions, the minting of secrets): broken heads, lying
   lengths, malformed multipart bodies, random files and fields;
4. 10 s idle, then the server's memory again.

It reports every fuzz outcome by kind (HTTP status and code, close code and reason), the outcomes
that are the server's fault (close 1011, HTTP 500: the server answers a bug of its own so, whatever
the client sent, and logs its traceback), error-level records and tracebacks in the server log,
the references' WER and final lag with and without the fuzzer, and the memory at the end against
idle (report.json and report.md in --out). A clean run has no fault of any of the three kinds; it
exits with status 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import re
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import harness
import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from captioner.tools import soak
from captioner.tools.evaluate import read_manifest

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_TIMEOUT_S = 15.0
PATHS = ["/v1/stream", "/", "/v1/listen", "/v1/realtime", "/v3/ws"]
ENDS = {"/v1/stream": '{"type": "end"}', "/": '{"eof" : 1}', "/v1/listen": '{"type": "CloseStream"}',
        "/v1/realtime": '{"type": "input_audio_buffer.commit"}', "/v3/ws": '{"type": "Terminate"}'}
API_PATHS = ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/realtime/client_secrets",
             "/v1/realtime/transcription_sessions", "/v1/models", "/v3/token", "/v1/nope"]
REFERENCE_FIGURES = ("wer", "final_lag_p50", "final_lag_p95", "errors", "behind", "sessions")  # of each soak level
FAULT = re.compile(r"^(close 1011|HTTP 500)\b")  # an outcome that is the server's fault


# -- the fuzz clients ------------------------------------------------------------------------------


class Fuzzer:
    """One random client after another; each outcome is counted by kind."""

    def __init__(self, port: int, rng: random.Random, speech: bytes) -> None:
        self.port = port
        self.rng = rng
        self.speech = speech  # 16 kHz s16le
        self.outcomes: Counter[str] = Counter()
        self.scenarios: Counter[str] = Counter()
        self.faults: list[str] = []  # outcomes that are the server's fault

    async def run(self, stop: asyncio.Event) -> None:
        scenarios = [self.garbage, self.bad_handshake, self.slow_handshake, self.bad_parameters,
                     self.random_messages, self.random_messages, self.hostile_messages, self.flush_storm,
                     self.never_reads, self.vanishes, self.http_requests, self.http_requests]
        while not stop.is_set():
            scenario = self.rng.choice(scenarios)
            self.scenarios[scenario.__name__] += 1
            try:
                outcome = await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S)
            except TimeoutError:
                outcome = "timeout (the client's)"
            except InvalidStatus as e:
                outcome = self._status(e.response.status_code, e.response.body)
            except InvalidHandshake as e:
                outcome = f"handshake: {type(e).__name__}"
            except ConnectionClosed as e:
                outcome = self._close(e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "")
            except (OSError, EOFError) as e:
                outcome = f"os: {type(e).__name__}"
            except Exception as e:  # the fuzzer's own trouble: counted, and it goes on
                outcome = f"client exception: {type(e).__name__}"
            self.outcomes[f"{scenario.__name__}: {outcome}"] += 1
            if FAULT.match(outcome):
                self.faults.append(f"{scenario.__name__}: {outcome}")

    def _status(self, status: int, body: bytes) -> str:
        try:
            error = json.loads(body)
            nested = error.get("error")  # OpenAI's {"error": {...}}; AssemblyAI's {"error": "..."}
            code = error.get("code") or error.get("err_code") or (nested.get("code") if isinstance(nested, dict)
                                                                   else nested and str(nested)[:30])
        except (ValueError, AttributeError):
            code = body.split(b":")[0].decode("latin-1")[:30].strip()
        return f"HTTP {status} {code}"

    def _close(self, code: int | None, reason: str) -> str:
        return f"close {code} {reason}".rstrip()

    def _url(self, path: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def _text(self) -> str:
        rng = self.rng
        return rng.choice([
            lambda: "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 200))),
            lambda: json.dumps({"type": rng.choice(["flush", "end", "KeepAlive", "Finalize", "x", None, 5, "Terminate",
                                                    "ForceEndpoint", "UpdateConfiguration", "session.update",
                                                    "input_audio_buffer.commit", "input_audio_buffer.clear"])}),
            lambda: json.dumps({"type": "input_audio_buffer.append", "audio": rng.choice(
                ["!!", "AAAA", "", None, 5, base64.b64encode(self._speech_chunk()).decode(), "A" * 100_001])}),
            lambda: json.dumps({"type": "session.update", "session": rng.choice([
                None, [], {"type": "transcription", "audio": {"input": {"format": {"type": rng.choice(
                    ["audio/pcm", "audio/pcmu", "audio/x", 5]), "rate": rng.choice([24000, 0, "x", 1e400])},
                    "turn_detection": rng.choice([None, {"type": "server_vad", "silence_duration_ms": -5}, 7]),
                    "transcription": {"model": rng.choice(["whisper-1", "x", None]), "language": rng.choice(
                        ["en", "xx", 5]), "prompt": rng.choice(["a, b", "x" * 20_000, None])}}}}])}),
            lambda: json.dumps({"type": "UpdateConfiguration", rng.choice(["min_turn_silence", "max_turn_silence",
                                "end_of_turn_confidence_threshold"]): rng.choice([-1, "x", 1e400, 500, None])}),
            lambda: json.dumps({"config": {"sample_rate": rng.choice([16000, 8000, "inf", -1, 1e308, "x", None]),
                                           "words": rng.choice([0, 1, "false", [], {}])}}),
            lambda: '{"config": {"sample_rate": 1e400}}',
            lambda: "[" * (n := rng.randrange(10, 40_000)) + "]" * n,
            lambda: '{"type": NaN}', lambda: '{"eof": Infinity}', lambda: "1" * 5000,
            lambda: json.dumps([rng.random() for _ in range(rng.randrange(1, 50))]),
            lambda: "x" * rng.randrange(60_000, 70_000),
        ])()

    def _binary(self) -> bytes:
        rng = self.rng
        return rng.choice([
            lambda: rng.randbytes(rng.randrange(0, 4000)),
            lambda: b"",
            lambda: b"\x00" * 3,
            lambda: np.full(rng.randrange(1, 400), np.nan, "<f4").tobytes(),
            lambda: self._speech_chunk(),
            lambda: rng.randbytes(rng.choice([1_048_577, 1_500_000])),
        ])()

    def _speech_chunk(self) -> bytes:
        start = self.rng.randrange(0, max(1, len(self.speech) - 6400)) & ~1
        return self.speech[start : start + 3200]

    def _query(self) -> str:
        rng = self.rng
        keys = ["sample_rate", "encoding", "language", "token", "topic", "channels", "interim_results",
                "endpointing", "utterance_end_ms", "vad_events", "punctuate", rng.randbytes(3).hex(), "intent",
                "format_turns", "keyterms_prompt", "min_turn_silence", "max_turn_silence", "speaker_labels",
                "language_detection", "model"]
        values = ["inf", "1e400", "nan", "-1", "16000", "8000", "48000", "abc", "", "linear16", "mulaw", "pcm_f32le",
                  "fr", "true", "maybe", "false", "%00", "%ff%fe", "a" * 300, "0x10", "99999999999", "transcription",
                  "pcm_s16le", "pcm_mulaw", '["a","b"]', "[[[[", "ek_1_0000000000000000_" + "0" * 64]
        return "&".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randrange(0, 8)))

    # scenarios: each returns its outcome, or raises what the driver turns into one

    async def garbage(self) -> str:
        """Random bytes instead of an HTTP request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(self.rng.choice([self.rng.randbytes(self.rng.randrange(1, 9000)),
                                      b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n",
                                      b"GET /v1/stream HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"]))
        return await self._response(reader, writer)

    async def bad_handshake(self) -> str:
        """An upgrade with random headers: wrong Host, foreign Origin, broken keys, repeated headers."""
        rng = self.rng
        host = rng.choice([f"127.0.0.1:{self.port}", f"evil.example:{self.port}", "", "[::1]", "localhost"])
        lines = [f"GET {rng.choice(PATHS + ['/nope', '/v1/stream/../x', '//'])}?{self._query()} HTTP/1.1"]
        if host:
            lines.append(f"Host: {host}")
        if rng.random() < 0.2:
            lines.append(f"Host: other.example:{self.port}")
        lines += ["Upgrade: websocket", "Connection: Upgrade",
                  f"Sec-WebSocket-Key: {rng.choice(['dGhlIHNhbXBsZSBub25jZQ==', 'short', ''])}",
                  f"Sec-WebSocket-Version: {rng.choice(['13', '8', 'x'])}"]
        if rng.random() < 0.5:
            lines.append(f"Origin: {rng.choice(['http://evil.example', f'https://127.0.0.1:{self.port}', 'null'])}")
        if rng.random() < 0.3:
            lines.append(f"Sec-WebSocket-Protocol: {rng.choice(['token, x', 'bearer', ',,,', 'token'])}")
        if rng.random() < 0.3:
            lines.append(f"Authorization: {rng.choice(['Bearer x', 'Token', 'Basic Zm9v', 'Bearer ' + 'z' * 500])}")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
        return await self._response(reader, writer)

    async def slow_handshake(self) -> str:
        """Connect and send the request a byte at a time, or not at all."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        request = f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n".encode()
        for byte in request[: self.rng.randrange(0, len(request))]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.5)
        return await self._response(reader, writer)

    async def _response(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 12)
            status = int(head.split(b" ", 2)[1])
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
            return self._status(status, body) if status != 101 else "HTTP 101 upgraded"
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed without a response"
        finally:
            writer.close()

    async def bad_parameters(self) -> str:
        """A proper client library with random query parameters and tokens."""
        async with connect(self._url(self.rng.choice(PATHS), self._query()), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "end"}) if self.rng.random() < 0.5 else '{"eof" : 1}')
            async for _ in ws:
                pass
            return self._close(ws.close_code, ws.close_reason)

    async def random_messages(self) -> str:
        """Random text and binary messages, some speech among them, then maybe an end."""
        path = self.rng.choice(PATHS)
        query = {"/v1/listen": "encoding=linear16&sample_rate=16000",
                 "/v1/realtime": "intent=transcription"}.get(path, "sample_rate=16000")
        async with connect(self._url(path, query), max_size=None, open_timeout=10) as ws:
            reader = asyncio.create_task(self._drain(ws))
            for _ in range(self.rng.randrange(1, 30)):
                await ws.send(self._text() if self.rng.random() < 0.5 else self._binary())
                await asyncio.sleep(self.rng.random() * 0.1)
            if self.rng.random() < 0.7:
                await ws.send(ENDS[path])
            await reader
            return self._close(ws.close_code, ws.close_reason)

    async def hostile_messages(self) -> str:
        """One message chosen to hurt: deep JSON, a huge frame, NaN audio, absurd config numbers."""
        path = self.rng.choice(PATHS)
        query = "encoding=pcm_f32le" if path == "/v1/stream" and self.rng.random() < 0.5 else ""
        async with connect(self._url(path, query), max_size=None, open_timeout=10) as ws:
            reader = asyncio.create_task(self._drain(ws))
            await ws.send(self.rng.choice([self._text, self._binary])())
            await asyncio.sleep(0.5)
            await ws.close()
            await reader
            return self._close(ws.close_code, ws.close_reason)

    async def flush_storm(self) -> str:
        """Speech with control messages far beyond the rate limit."""
        path = self.rng.choice(["/v1/stream", "/v1/listen"])
        query = "encoding=linear16&sample_rate=16000" if path == "/v1/listen" else ""
        control = '{"type": "flush"}' if path == "/v1/stream" else '{"type": "Finalize"}'
        async with connect(self._url(path, query), open_timeout=10) as ws:
            reader = asyncio.create_task(self._drain(ws))
            for _ in range(20):
                await ws.send(self._speech_chunk())
                for _ in range(20):
                    await ws.send(control)
                await asyncio.sleep(0.1)
            await ws.send('{"type": "end"}' if path == "/v1/stream" else '{"type": "CloseStream"}')
            await reader
            return self._close(ws.close_code, ws.close_reason)

    async def never_reads(self) -> str:
        """Sends fast and never reads (Vosk answers every frame), then goes away."""
        async with connect(self._url("/"), max_queue=1, open_timeout=10) as ws:
            for _ in range(self.rng.randrange(100, 3000)):
                await ws.send(self.rng.choice([b"\x00\x00", self._speech_chunk()]))
            await asyncio.sleep(self.rng.random() * 3)
            ws.transport.abort()
            return "aborted by the client"

    async def vanishes(self) -> str:
        """Streams some speech, then drops the TCP connection, or half-closes it."""
        async with connect(self._url("/v1/stream"), open_timeout=10) as ws:
            for _ in range(self.rng.randrange(1, 30)):
                await ws.send(self._speech_chunk())
                await asyncio.sleep(0.05)
            if self.rng.random() < 0.5:
                ws.transport.abort()
                return "aborted by the client"
            ws.transport.write_eof()
            await ws.wait_closed()
            return self._close(ws.close_code, ws.close_reason)

    async def http_requests(self) -> str:
        """A request with a body to the HTTP API: broken heads, lying lengths, random multipart, random files."""
        rng = self.rng
        boundary = rng.choice(["b", "", "x" * 100, "--"])
        fields = [(rng.choice(["file", "model", "response_format", "timestamp_granularities[]", "language",
                               "prompt", "stream", "temperature", "x"]),
                   rng.choice([b"whisper-1", b"json", b"verbose_json", b"word", b"true", b"nan", b"1e400", b"xx",
                               rng.randbytes(rng.randrange(0, 3000)), b"RIFF" + rng.randbytes(200),
                               self._wav(), bytes([255, 251]) + rng.randbytes(5000)]))
                  for _ in range(rng.randrange(0, 6))]
        if rng.random() < 0.5:
            fields += [("file", self._wav()), ("model", b"whisper-1")]
        body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"%s\r\n\r\n%s\r\n"
                        % (boundary.encode(), name.encode(), b'; filename="a.wav"' if name == "file" else b"", value)
                        for name, value in fields) + (b"--%s--\r\n" % boundary.encode() if rng.random() < 0.8 else b"")
        if rng.random() < 0.2:
            body = rng.choice([b"{}", b'{"expires_after": {"seconds": 1e400}}', b"[" * 5000, rng.randbytes(100)])
        length = rng.choice([len(body)] * 6 + [0, len(body) + 100, 99_999_999_999, -1])
        method = rng.choice(["POST"] * 8 + ["PUT", "OPTIONS", "GET", "DELETE"])
        lines = [f"{method} {rng.choice(API_PATHS)}?{self._query()} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 f"Content-Type: {rng.choice(['multipart/form-data; boundary=' + boundary, 'application/json', ''])}",
                 f"Content-Length: {length}" if rng.random() < 0.9 else "Transfer-Encoding: chunked"]
        if rng.random() < 0.3:
            lines.append(rng.choice(["Expect: 100-continue", "Origin: http://evil.example", "Authorization: Bearer x",
                                     "Transfer-Encoding: gzip", "Content-Length: 5"]))
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body)
        return await self._response(reader, writer)

    def _wav(self) -> bytes:
        out = io.BytesIO()
        pcm = np.frombuffer(self._speech_chunk(), "<i2")
        sf.write(out, pcm[: self.rng.randrange(1, len(pcm) + 1)], 16000, format="WAV", subtype="PCM_16")
        return out.getvalue()

    async def _drain(self, ws) -> None:  # noqa: ANN001
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass


# -- the run ---------------------------------------------------------------------------------------


def references(url: str, clips: list, n: int, duration: float) -> soak.Level:
    return asyncio.run(soak.soak(url, clips, n, duration, ramp=1.0))


async def fuzzed_references(url: str, port: int, clips: list, n: int, duration: float, fuzzers: list[Fuzzer]
                            ) -> soak.Level:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(f.run(stop)) for f in fuzzers]
    try:
        return await soak.soak(url, clips, n, duration, ramp=1.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def log_problems(log_path: Path) -> tuple[int, int, list[str]]:
    """Error-level records, tracebacks, and the first few of them, in the server's JSON log."""
    errors, tracebacks, examples = 0, 0, []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            tracebacks += "Traceback" in line
            continue
        if record.get("level") in ("error", "critical"):
            errors += 1
            examples.append(line[:300])
        tracebacks += "exception" in record
    return errors, tracebacks, examples[:5]


def count_faults(faults: list[str], tracebacks: int) -> dict[str, int]:
    """The server's faults by kind: 1011 closes and HTTP 500 answers the fuzz clients saw, tracebacks in its log."""
    return {"close_1011": sum(f.split(": ", 1)[1].startswith("close 1011") for f in faults),
            "http_500": sum(f.split(": ", 1)[1].startswith("HTTP 500") for f in faults),
            "log_tracebacks": tracebacks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of each phase (default: 300)")
    parser.add_argument("--fuzzers", type=int, default=4, help="concurrent fuzz clients (default: 4)")
    parser.add_argument("--references", type=int, default=2, help="real-time reference streams (default: 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--manifest", type=Path, default=ROOT / "samples" / "manifest.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz")
    parser.add_argument("--serve", nargs=argparse.REMAINDER, default=[], help="extra `captioner serve` options")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clips = read_manifest(args.manifest)
    log_path = args.out / "server.log"
    with harness.serving(args.serve, log=log_path) as url:
        port = int(url.rsplit(":", 1)[1])
        time.sleep(5)
        idle_mb = harness.resident_mb(url)
        baseline = references(url, clips, args.references, args.duration)
        print(json.dumps({"baseline": asdict(baseline.summarize())}), flush=True)
        from captioner.stream.audio import load_audio

        speech = (load_audio(clips[0].audio).numpy() * 32767).astype("<i2").tobytes()
        fuzzers = [Fuzzer(port, random.Random(args.seed + k), speech) for k in range(args.fuzzers)]
        fuzzed = asyncio.run(fuzzed_references(url, port, clips, args.references, args.duration, fuzzers))
        time.sleep(10)
        end_mb = harness.resident_mb(url)
        readyz = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read())
    outcomes = sum((f.outcomes for f in fuzzers), Counter())
    faults = [fault for f in fuzzers for fault in f.faults]
    errors, tracebacks, examples = log_problems(log_path)
    fault_counts = count_faults(faults, tracebacks)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "duration_s": args.duration, "fuzzers": args.fuzzers, "references": args.references, "seed": args.seed,
        "fuzz_clients": sum(outcomes.values()), "scenarios": dict(sum((f.scenarios for f in fuzzers), Counter())),
        "outcomes": dict(outcomes.most_common()), "faults": fault_counts, "server_faults": faults,
        "log_errors": errors, "log_tracebacks": tracebacks, "log_error_examples": examples,
        "reference": {name: {k: asdict(level.summarize())[k] for k in REFERENCE_FIGURES}
                      for name, level in (("without fuzzer", baseline), ("with fuzzer", fuzzed))},
        "memory_mb": {"idle": round(idle_mb), "after": round(end_mb)}, "readyz_after": readyz,
    }
    (args.out / "report.json").write_text(json.dumps(summary, indent=1))
    verdict = "NOT clean" if any(fault_counts.values()) else "clean"
    lines = [f"# Live fuzz, {summary['date']}", "", f"{summary['fuzz_clients']} fuzz clients in {args.duration:g} s "
             f"({args.fuzzers} at a time), {args.references} real-time references.", "",
             f"Server faults ({verdict}): {fault_counts['close_1011']} closes 1011, {fault_counts['http_500']} HTTP "
             f"500, {tracebacks} tracebacks in the server log; error-level log records: {errors}.", "",
             "| reference | WER | final lag p50 | p95 | errors |", "|---|---|---|---|---|"]
    for name, r in summary["reference"].items():
        wer = f"{100 * r['wer']:.1f} %" if r["wer"] is not None else "-"
        lag = f"{r['final_lag_p50']:.2f} s | {r['final_lag_p95']:.2f} s"
        lines.append(f"| {name} | {wer} | {lag} | {r['errors'] or 'none'} |")
    lines += ["", f"Resident memory: idle {summary['memory_mb']['idle']} MB, 10 s after the run "
              f"{summary['memory_mb']['after']} MB.", "", "| outcome | clients |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in outcomes.most_common()]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any(fault_counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
