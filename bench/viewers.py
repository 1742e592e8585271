"""Caption viewers at scale: real-time speakers, thousands of viewers of their topics, every final checked and timed.

    python bench/viewers.py [--duration 60] [--streams 4] [--viewers 500] [--reconnecting 20] [--processes 2]
        [--warm-up 15] [--skip-broker] [--url ws://... [--broker ws://.../mqtt]]

One server; after a warm-up (the speakers alone for --warm-up seconds), four phases of --duration seconds each, a
fresh set of topics in each:

1. baseline: --streams speakers, no viewer;
2. server: the same speakers, each topic read by --viewers viewers on loopback, half of them server-sent events
   (`GET /v1/captions/T`), half WebSockets on the same path;
3. broker: the same again, the viewers subscribed to mosquitto's websockets listener instead (`captioner/T/final`
   at QoS 1, `/partial`, `/status`), the server publishing there (--mqtt-url);
4. baseline again: the speakers alone once more, so that "without viewers" brackets the phases with them (the
   machine's other load drifts); both baselines' finals are pooled.

A speaker is a native client (tools/replay.py) streaming clips of ../shared/eval (samples/ when absent) back to
back, 1 s of silence between them, at real-time pace in 100 ms chunks, to `/v1/stream?topic=T`, one topic each;
the speakers start 0.5 s apart. --reconnecting viewers of each viewer phase, spread over the topics and kinds,
close their connection once between 30 % and 70 % of the stream, wait 1 s and connect again: a server-sent event
viewer with `Last-Event-ID` (the id of the last final it got), a WebSocket viewer with `?after=`, an MQTT viewer
with its persistent session (clean_session false, QoS 1: the broker keeps its finals while it is away).

Per viewer: whether its finals equal its speaker's (same session, segments and texts, in order, none missing,
none twice; MQTT viewers drop a final whose id they have seen, as QoS 1 may deliver twice, and those are counted).
Added lag: the receive time of a final at a viewer minus its receive time at the speaker (time.monotonic(), one
clock for every process), over the viewers that stayed connected (a reconnecting viewer's missed finals come by
design after its pause; they are reported apart). Speakers' final lag: receive time minus the wall time the audio
of the final's end was sent (as `captioner soak`). Server CPU and memory from its /metrics, the broker's from
/proc. Per 1,000 viewers: CPU over each phase's streaming, minus the baselines' (the broker's: all of it);
memory of the viewers connected, before the speakers start, minus before they connected (and, in the JSON, the
streaming peak minus the baselines').

The viewers run in --processes processes of their own, forked from this one (the speakers run here); cheap
clients: raw asyncio for server-sent events, websockets for WebSockets, a minimal MQTT 3.1.1 subscriber on
websockets for MQTT (aiomqtt's clients cost about 3 times the CPU, which on 2 cores delayed their own finals), and
only finals are parsed. Server, broker, speakers and viewers all share this machine's cores: on the 2-core bench
machine that is the setting the figures are for.

Without --url it starts `captioner serve` (--model tiny.en, --threads 2, CPU; --max-pending-per-address 0, as
2,000 viewers come from one loopback address) on a free port, and Debian's mosquitto with a plain listener (the
server's) and a websockets listener (the viewers'). With --url, the broker phase needs --broker, the websockets
listener of the broker that server publishes to. Writes bench/results/viewers.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import harness
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from captioner.stream.audio import SAMPLE_RATE
from captioner.tools import soak
from captioner.tools.evaluate import Clip
from captioner.tools.replay import ReplayError, replay

Kind = Literal["sse", "ws", "mqtt"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MQTT_PREFIX = "captioner"  # the server's default --mqtt-prefix
MAX_QUEUED = 100_000  # mosquitto: messages held per client (a persistent session away, a slow reader)
MQTT_KEEPALIVE_S = 60  # a viewer pings the broker every half of it
MQTT_PINGREQ = b"\xc0\x00"
MQTT_DISCONNECT = b"\xe0\x00"
RAMP_S = 0.5  # between speakers' starts
RECONNECT_PAUSE_S = 1.0  # a reconnecting viewer is away this long
RECONNECT_WINDOW = (0.3, 0.7)  # ...leaving between these fractions of the stream
CONNECTS_AT_ONCE = 16  # per viewer process: connections being opened at once
MAX_TRIES = 20  # connection attempts a viewer makes before it gives up
TIMEOUT_CONNECT_S = 180.0  # every viewer of a phase connected within this
GRACE_S = 10.0  # after the speakers are done, time for the viewers' last finals and ended status
SETTLE_S = 3.0  # between phases: the server closes the last sessions and viewers
SCRAPE_EVERY_S = 2.0
ADDED_LAG_TARGET_MS = 100.0  # acceptance: added delivery lag p95
SPEAKER_LAG_GROWTH_S = 0.2  # acceptance: speakers' final lag p95 with viewers minus without


# -- what speakers and viewers got -----------------------------------------------------------------


@dataclass(frozen=True)
class Heard:
    """A final as the speaker got it."""

    segment: int
    text: str
    at: float  # time.monotonic() when it came
    lag: float  # seconds after the audio of its end was sent


@dataclass
class Spoken:
    """One speaker's stream."""

    topic: str
    session: str | None = None
    finals: list[Heard] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Spec:
    """One viewer to run."""

    index: int
    topic: str
    kind: Kind
    reconnect_at: float | None  # seconds after the first speaker's start; None: stays connected


@dataclass
class Seen:
    """What one viewer got."""

    spec: Spec
    finals: list[tuple[str, int, str, str, float]] = field(default_factory=list)  # (session, segment, text, id, at)
    last_id: str | None = None
    redelivered: int = 0  # MQTT: finals delivered again (QoS 1), dropped by their id
    reconnected: int = 0  # times it left on purpose and came back
    resumed: int = 0  # ...presenting the id of the last final it got (server-sent events, WebSocket)
    lost: int = 0  # connections that ended otherwise, before the topic's stream did (it resumed)
    refused: int = 0  # connection attempts refused or failed
    ended: bool = False  # it got the stream's ended status
    error: str | None = None  # why it gave up


# -- speakers ---------------------------------------------------------------------------------------


async def speak(url: str, topic: str, audio: np.ndarray, delay_s: float) -> Spoken:
    """Stream the audio to the topic at real-time pace after delay_s; every final's receive time and lag."""
    await asyncio.sleep(delay_s)
    spoken = Spoken(topic)

    def on_message(t: float, message: dict) -> None:
        if message.get("type") == "ready":
            spoken.session = message.get("session")
        elif message.get("type") == "final":
            spoken.finals.append(Heard(message["segment"], message["text"], time.monotonic(), t - message["end"]))

    try:
        result = await replay(url, audio, on_message=on_message, query={"topic": topic})
    except ReplayError as e:
        spoken.error = str(e)
        return spoken
    if result.error:
        spoken.error = result.error.get("code", "error")
    elif result.close_code != 1000:
        spoken.error = f"close {result.close_code}"
    return spoken


# -- viewers (in the viewer processes) ---------------------------------------------------------------


async def _sse(spec: Spec, seen: Seen, base: str, gate: asyncio.Semaphore, ready: asyncio.Future) -> None:
    """A server-sent event viewer on a raw socket: reads until the stream's ended status (or its connection ends)."""
    parts = urlsplit(base)
    async with gate:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        resume = f"Last-Event-ID: {seen.last_id}\r\n" if seen.last_id else ""
        writer.write(f"GET /v1/captions/{quote(spec.topic)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Accept: text/event-stream\r\n{resume}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
    try:
        if head.split(maxsplit=2)[1] != b"200":
            raise ConnectionError(f"HTTP {head.split(maxsplit=2)[1].decode()}")
        _ready(ready)
        buffer = b""
        while data := await reader.read(65536):
            at = time.monotonic()
            *blocks, buffer = (buffer + data).split(b"\n\n")
            for block in blocks:
                if block.startswith(b"id: "):  # only finals have ids
                    _final(seen, json.loads(block.partition(b"\ndata: ")[2]), at)
                elif block.startswith(b'data: {"type": "status"') and b'"ended"' in block:
                    seen.ended = True
                    return
    finally:
        writer.close()


async def _ws(spec: Spec, seen: Seen, base: str, gate: asyncio.Semaphore, ready: asyncio.Future) -> None:
    """A WebSocket viewer: reads until the stream's ended status (or its connection ends)."""
    resume = f"?after={quote(seen.last_id)}" if seen.last_id else ""
    async with gate:
        websocket = await connect(f"{base}/v1/captions/{quote(spec.topic)}{resume}", max_size=None, open_timeout=60)
    async with websocket:
        _ready(ready)
        with contextlib.suppress(ConnectionClosed):
            async for text in websocket:
                if text.startswith('{"type": "final"'):
                    _final(seen, json.loads(text), time.monotonic())
                elif text.startswith('{"type": "status"') and '"ended"' in text:
                    seen.ended = True
                    return


async def _mqtt(spec: Spec, seen: Seen, broker: str, gate: asyncio.Semaphore, ready: asyncio.Future) -> None:
    """An MQTT viewer on the broker's websockets listener: the topic's finals (QoS 1), partials and status, until
    the stream's ended status. A reconnecting one has a persistent session, so that the broker keeps its finals
    while it is away. A minimal MQTT 3.1.1 subscriber (mqtt_packets), as cheap a client as the others."""
    topic = f"{MQTT_PREFIX}/{spec.topic}"
    async with gate:
        websocket = await connect(broker, subprotocols=[Subprotocol("mqtt")], max_size=None, open_timeout=60)
    async with websocket:
        flags = 0x00 if spec.reconnect_at is not None else 0x02  # clean session
        await websocket.send(mqtt_packet(0x10, _utf8("MQTT") + bytes([4, flags]) + MQTT_KEEPALIVE_S.to_bytes(2, "big")
                                         + _utf8(f"bench-viewer-{spec.topic}-{spec.index}")))
        await websocket.send(mqtt_packet(0x82, b"\x00\x01" + _utf8(f"{topic}/final") + b"\x01"
                                         + _utf8(f"{topic}/partial") + b"\x00" + _utf8(f"{topic}/status") + b"\x01"))
        pinging = asyncio.create_task(_ping(websocket))
        try:
            await _subscribed(websocket, seen, ready)
        finally:
            pinging.cancel()
            with contextlib.suppress(ConnectionClosed):
                await websocket.send(MQTT_DISCONNECT)


async def _subscribed(websocket: ClientConnection, seen: Seen, ready: asyncio.Future) -> None:
    buffer = bytearray()
    with contextlib.suppress(ConnectionClosed):
        async for data in websocket:
            buffer += data  # type: ignore[operator]
            for first, body in mqtt_packets(buffer):
                kind = first >> 4
                if kind == 2 and body[1] != 0:  # CONNACK, refused
                    raise ConnectionError(f"the broker refused the connection: CONNACK {body[1]}")
                if kind == 9:  # SUBACK
                    _ready(ready)
                if kind != 3:
                    continue
                n = int.from_bytes(body[:2], "big")  # PUBLISH: topic, packet id if QoS > 0, payload
                name, rest = body[2 : 2 + n], body[2 + n :]
                if first & 0x06:
                    await websocket.send(mqtt_packet(0x40, rest[:2]))  # PUBACK
                    rest = rest[2:]
                if name.endswith(b"/final"):
                    final = json.loads(rest)
                    if any(final["id"] == f[3] for f in seen.finals[-64:]):
                        seen.redelivered += 1
                    else:
                        _final(seen, final, time.monotonic())
                elif name.endswith(b"/status") and b'"ended"' in rest:
                    seen.ended = True
                    return


async def _ping(websocket: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(MQTT_KEEPALIVE_S / 2)
            await websocket.send(MQTT_PINGREQ)


def mqtt_packet(first: int, body: bytes) -> bytes:
    """An MQTT control packet: its first byte (type and flags), the body's length as a variable-length integer,
    the body."""
    length, n = bytearray(), len(body)
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first, *length]) + body


def mqtt_packets(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """The complete MQTT packets at the start of the buffer, each taken out of it: (first byte, body)."""
    while len(buffer) >= 2:
        length, k = 0, 1
        while True:
            if k >= len(buffer):
                return
            length |= (buffer[k] & 0x7F) << 7 * (k - 1)
            k += 1
            if not buffer[k - 1] & 0x80:
                break
        if len(buffer) < k + length:
            return
        first, body = buffer[0], bytes(buffer[k : k + length])
        del buffer[: k + length]
        yield first, body


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


VIEWERS: dict[Kind, Callable[[Spec, Seen, str, asyncio.Semaphore, asyncio.Future],
                             Coroutine[Any, Any, None]]] = {"sse": _sse, "ws": _ws, "mqtt": _mqtt}


def _ready(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(True)


def _final(seen: Seen, message: dict, at: float) -> None:
    seen.finals.append((message["session"], message["segment"], message["text"], message["id"], at))
    seen.last_id = message["id"]


async def view(seen: Seen, address: str, gate: asyncio.Semaphore, ready: asyncio.Future, go: asyncio.Future) -> None:
    """Run one viewer until its topic's stream has ended: connected again after a planned leave (its spec's
    reconnect_at) or a lost connection, resuming from the last final it got."""
    spec = seen.spec
    while not seen.ended and seen.refused < MAX_TRIES:
        reading = asyncio.create_task(VIEWERS[spec.kind](spec, seen, address, gate, ready))
        timer = asyncio.create_task(_leave(spec, go)) if spec.reconnect_at is not None and not seen.reconnected \
            else None
        await asyncio.wait({reading} | ({timer} if timer else set()), return_when=asyncio.FIRST_COMPLETED)
        if timer is not None and timer.done() and not reading.done():
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            seen.reconnected += 1
            seen.resumed += seen.last_id is not None and spec.kind != "mqtt"
            await asyncio.sleep(RECONNECT_PAUSE_S)
            continue
        if timer is not None:
            timer.cancel()
        try:
            await reading
        except (OSError, asyncio.IncompleteReadError, InvalidHandshake, TimeoutError) as e:
            seen.refused += 1
            seen.error = f"{type(e).__name__}: {e}"[:200]
            await asyncio.sleep(RECONNECT_PAUSE_S)
            continue
        if not seen.ended:
            seen.lost += 1
    if seen.ended:
        seen.error = None


async def _leave(spec: Spec, go: asyncio.Future) -> None:
    began = await go
    assert spec.reconnect_at is not None
    await asyncio.sleep(max(0.0, began + spec.reconnect_at - time.monotonic()))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _receive(conn: Connection) -> Any:
    """The next message from the parent process, without blocking the loop."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()


async def watch(specs: list[Spec], url: str, broker: str | None, conn: Connection) -> None:
    """A viewer process: connect every viewer, say so, wait for ("go", t0), read until every viewer's stream has
    ended or ("stop",) comes, and send back what each viewer got and this process's CPU seconds meanwhile."""
    loop = asyncio.get_running_loop()
    gate, go = asyncio.Semaphore(CONNECTS_AT_ONCE), loop.create_future()
    seen = [Seen(spec) for spec in specs]
    ready = [loop.create_future() for _ in specs]
    tasks = [asyncio.create_task(view(s, broker if s.spec.kind == "mqtt" else url, gate, r, go))  # type: ignore[arg-type]
             for s, r in zip(seen, ready)]
    for task, future in zip(tasks, ready):
        task.add_done_callback(lambda _, future=future: _ready(future))
    await asyncio.gather(*ready)
    conn.send(("connected", sum(not t.done() for t in tasks)))
    _, began = await _receive(conn)
    go.set_result(began)
    cpu_s = _cpu_s()
    stop = asyncio.create_task(_receive(conn))
    await asyncio.wait([asyncio.gather(*tasks, return_exceptions=True), stop], return_when=asyncio.FIRST_COMPLETED)
    for task in [*tasks, stop]:
        task.cancel()
    await asyncio.gather(*tasks, stop, return_exceptions=True)
    for task, one in zip(tasks, seen):
        if not task.cancelled() and task.exception() is not None:  # a bug in a client: on the record, not a hang
            one.error = repr(task.exception())[:200]
    conn.send(("seen", [asdict(s) for s in seen], _cpu_s() - cpu_s))


def _watch_process(specs: list[Spec], url: str, broker: str | None, conn: Connection) -> None:
    asyncio.run(watch(specs, url, broker, conn))


# -- scoring -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """A viewer's finals against its speaker's."""

    equal: bool
    missing: int  # the speaker's finals it never got
    duplicated: int  # finals it got more than once
    out_of_order: int  # finals that came before one that precedes them
    wrong_text: int  # finals whose text differs from the speaker's
    foreign: int  # finals of another session, or of no final of the speaker's
    added_lags: list[float]  # seconds after the speaker got each final, per final it got (first receipt)


def score(seen: dict, spoken: Spoken) -> Score:
    expected = {(spoken.session, f.segment): f for f in spoken.finals}
    got = [(session, segment, text) for session, segment, text, _, _ in seen["finals"]]
    keys = [(session, segment) for session, segment, _ in got]
    order = {key: n for n, key in enumerate(expected)}
    positions = [order[key] for key in dict.fromkeys(keys) if key in order]
    first = {}
    for session, segment, _, _, at in seen["finals"]:
        first.setdefault((session, segment), at)
    lags = [at - expected[key].at for key, at in first.items() if key in expected]
    return Score(
        equal=got == [(spoken.session, f.segment, f.text) for f in spoken.finals],
        missing=len(set(expected) - set(keys)), duplicated=len(keys) - len(set(keys)),
        out_of_order=sum(b < a for a, b in itertools.pairwise(positions)),
        wrong_text=sum(key in expected and expected[key].text != text for key, (_, _, text) in zip(keys, got)),
        foreign=sum(key not in expected for key in keys), added_lags=lags)


def percentiles(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, float | int | None]:
    def at(q: float) -> float | None:
        return round(float(np.percentile(values, q)) * scale, digits) if values else None

    return {"p50": at(50), "p95": at(95), "p99": at(99), "max": round(max(values) * scale, digits) if values else None,
            "n": len(values)}


# -- the server's and the broker's resources -----------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The server's and the broker's CPU seconds and resident memory at one moment (None: not readable)."""

    t: float
    server_cpu_s: float | None
    server_loop_cpu_s: float | None  # its main thread's, which runs the event loop (fan-out, sockets), not the model
    server_rss_mb: float | None
    fanout_s: float | None  # captioner_feed_fanout_seconds: its sum and count so far
    fanouts: float | None
    broker_cpu_s: float | None
    broker_rss_mb: float | None

    @classmethod
    def take(cls, url: str, pids: tuple[int | None, int | None]) -> Sample:
        """pids: the server's and the broker's, where they run on this machine."""
        values = _metrics(url)
        server, broker = pids
        broker_cpu_s, broker_rss_mb = _process(broker) if broker else (None, None)
        rss = values.get("process_resident_memory_bytes")
        return cls(time.monotonic(), values.get("process_cpu_seconds_total"), _thread_cpu_s(server) if server else None,
                   rss / 2**20 if rss else None, values.get("captioner_feed_fanout_seconds_sum"),
                   values.get("captioner_feed_fanout_seconds_count"), broker_cpu_s, broker_rss_mb)


def _metrics(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(soak.metrics_url(url), timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


def _process(pid: int) -> tuple[float | None, float | None]:
    """A process's CPU seconds (user and system) and resident memory in MiB, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return _cpu_s_of(Path(f"/proc/{pid}/stat")), rss_kb / 1024 if rss_kb is not None else None


def _thread_cpu_s(pid: int) -> float | None:
    """The CPU seconds of a process's main thread."""
    return _cpu_s_of(Path(f"/proc/{pid}/task/{pid}/stat"))


def _cpu_s_of(stat: Path) -> float | None:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def listener_pid(url: str) -> int | None:
    """The process on this machine that listens on the URL's loopback port (None: none found, or not loopback)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state, inode = line.split()[1], line.split()[3], line.split()[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == parts.port:  # LISTEN
                    inodes.add(f"socket:[{inode}]")
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return int(fd.parts[2])
    return None


def _cores(a: Sample, b: Sample, key: str) -> float | None:
    x, y = getattr(a, key), getattr(b, key)
    return round((y - x) / (b.t - a.t), 3) if x is not None and y is not None and b.t > a.t else None


def _peak(samples: list[Sample], key: str) -> float | None:
    values = [getattr(s, key) for s in samples if getattr(s, key) is not None]
    return round(max(values), 1) if values else None


# -- a phase -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every phase shares."""

    url: str  # the server
    broker: str | None  # the broker's websockets listener (ws://host:port)
    pids: tuple[int | None, int | None]  # the server's and the broker's, where they run on this machine
    audios: list[np.ndarray]  # each speaker's programme
    duration_s: float
    viewers: int  # per topic
    reconnecting: int  # per phase
    processes: int
    run: str  # in every topic name of this run


def plan(topics: list[str], kinds: list[Kind], per_topic: int, reconnecting: int, duration_s: float) -> list[Spec]:
    """per_topic viewers of each topic, split evenly over the kinds; `reconnecting` of them, spread evenly over
    the kinds and, within a kind, over the topics, leave at times spread over RECONNECT_WINDOW of the stream."""
    groups: dict[Kind, list[tuple[str, int]]] = {kind: [] for kind in kinds}
    for topic in topics:
        for n in range(per_topic):
            groups[kinds[n * len(kinds) // per_topic]].append((topic, n))
    total = len(topics) * per_topic
    leaving: dict[tuple[str, int], float] = {}
    low, high = RECONNECT_WINDOW
    for group in groups.values():
        count = round(reconnecting * len(group) / total) if total else 0
        for m in range(count):
            at = low + (high - low) * (m / (count - 1) if count > 1 else 0.5)
            leaving[group[int((m + 0.5) * len(group) / count)]] = RAMP_S * len(topics) + at * duration_s
    return [Spec(index, topic, kind, leaving.get((topic, n)))
            for index, (kind, (topic, n)) in enumerate((k, member) for k, group in groups.items() for member in group)]


def warm_up(setup: Setup, seconds: float) -> None:
    """The speakers alone for `seconds` (the model's first passes, the allocator's caches), measured by nothing."""
    if seconds <= 0:
        return
    audios = [audio[: int(seconds * SAMPLE_RATE)] for audio in setup.audios]
    topics = [f"viewers-{setup.run}-warm-up-{k}" for k in range(len(audios))]
    asyncio.run(_speak_all(replace(setup, audios=audios), topics, time.monotonic()))
    time.sleep(SETTLE_S)


def run_phase(name: str, setup: Setup, kinds: list[Kind]) -> dict[str, Any]:
    """One phase: the viewers connected (none for the baseline), the speakers' streams, what everyone got."""
    topics = [f"viewers-{setup.run}-{name}-{k}" for k in range(len(setup.audios))]
    specs = plan(topics, kinds, setup.viewers, setup.reconnecting, setup.duration_s) if kinds else []
    load = os.getloadavg()[0]
    before = Sample.take(setup.url, setup.pids)
    workers = _start_workers(specs, setup)
    connected = sum(_expect(conn, "connected", TIMEOUT_CONNECT_S)[1] for _, conn in workers)
    joined = Sample.take(setup.url, setup.pids)
    began = time.monotonic() + 0.5
    for _, conn in workers:
        conn.send(("go", began))
    spoken, samples = asyncio.run(_speak_all(setup, topics, began))
    seen, clients_cpu_s = _collect(workers)
    after = samples[-1]
    connect_s = joined.t - before.t
    lags = [round(f.lag, 3) for s in spoken for f in s.finals if f.text]
    print(f"{name}: {connected}/{len(specs)} viewers connected in {connect_s:.1f} s; "
          f"speakers' errors: {[s.error for s in spoken if s.error] or 'none'}", flush=True)
    return {"phase": name, "topics": topics, **_outcome(specs, seen, spoken),
            "connected": connected, "connect_s": round(connect_s, 1),
            "speakers": [{"topic": s.topic, "session": s.session, "finals": len(s.finals), "error": s.error}
                         for s in spoken],
            "speaker_final_lag_s": percentiles(lags), "speaker_final_lags_s": lags,
            "server": _resources(before, joined, samples, "server"),
            "broker": _resources(before, joined, samples, "broker"),
            "clients_cpu_cores": round(clients_cpu_s / (after.t - samples[0].t), 3) if workers else None,
            "load_average_1m": {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}}


def _resources(before: Sample, joined: Sample, samples: list[Sample], side: str) -> dict[str, float | None]:
    """One side's (server, broker) CPU over the streaming, and memory: before the viewers connected, once they
    were, and at the streaming's peak."""
    rss = f"{side}_rss_mb"
    server = {"loop_cpu_cores": _cores(samples[0], samples[-1], "server_loop_cpu_s"),
              "fanout_mean_ms": _fanout_ms(samples[0], samples[-1])} if side == "server" else {}
    return {"cpu_cores": _cores(samples[0], samples[-1], f"{side}_cpu_s"), **server,
            "rss_mb_before": _round(getattr(before, rss)), "rss_mb_connected": _round(getattr(joined, rss)),
            "rss_mb_peak": _peak(samples, rss)}


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _fanout_ms(a: Sample, b: Sample) -> float | None:
    if None in (a.fanout_s, b.fanout_s, a.fanouts, b.fanouts) or b.fanouts == a.fanouts:  # type: ignore[operator]
        return None
    return round(1000 * (b.fanout_s - a.fanout_s) / (b.fanouts - a.fanouts), 3)  # type: ignore[operator]


def _start_workers(specs: list[Spec], setup: Setup) -> list[tuple[multiprocessing.Process, Connection]]:
    """The viewer processes, forked (they import nothing more), each with every processes-th viewer."""
    if not specs:
        return []
    context = multiprocessing.get_context("fork")
    workers = []
    for k in range(setup.processes):
        mine, theirs = context.Pipe()
        process = context.Process(target=_watch_process, args=(specs[k::setup.processes], setup.url, setup.broker,
                                                                theirs), daemon=True)
        process.start()
        workers.append((process, mine))
    return workers


def _expect(conn: Connection, kind: str, timeout_s: float) -> tuple:
    if not conn.poll(timeout_s):
        raise SystemExit(f"a viewer process sent no {kind!r} within {timeout_s:g} s")
    message = conn.recv()
    assert message[0] == kind, message
    return message


async def _speak_all(setup: Setup, topics: list[str], began: float) -> tuple[list[Spoken], list[Sample]]:
    """Every speaker's stream, started RAMP_S apart from `began` on, and the resources sampled meanwhile."""
    samples: list[Sample] = []

    async def sampling() -> None:
        while True:
            samples.append(await asyncio.to_thread(Sample.take, setup.url, setup.pids))
            await asyncio.sleep(SCRAPE_EVERY_S)

    await asyncio.sleep(max(0.0, began - time.monotonic()))
    sampler = asyncio.create_task(sampling())
    spoken = await asyncio.gather(*(speak(setup.url, topic, audio, RAMP_S * k)
                                    for k, (topic, audio) in enumerate(zip(topics, setup.audios))))
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    samples.append(await asyncio.to_thread(Sample.take, setup.url, setup.pids))
    return list(spoken), samples


def _collect(workers: list[tuple[multiprocessing.Process, Connection]]) -> tuple[list[dict], float]:
    """What every viewer got: each process's report, once its viewers have all seen their stream end or GRACE_S
    after the speakers were done; and the viewer processes' CPU seconds over the streaming."""
    deadline = time.monotonic() + GRACE_S
    for _, conn in workers:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            conn.send(("stop",))
    seen, cpu_s = [], 0.0
    for process, conn in workers:
        _, part, used_s = _expect(conn, "seen", 60)
        seen += part
        cpu_s += used_s
        process.join(10)
    return seen, cpu_s


def _outcome(specs: list[Spec], seen: list[dict], spoken: list[Spoken]) -> dict[str, Any]:
    """Finals compared and timed, per viewer kind and in all."""
    speakers = {s.topic: s for s in spoken}
    scores = [(s, score(s, speakers[s["spec"]["topic"]])) for s in seen]
    staying = [lag for s, sc in scores if s["spec"]["reconnect_at"] is None for lag in sc.added_lags]
    leaving = [(s, sc) for s, sc in scores if s["spec"]["reconnect_at"] is not None]
    unequal = [{"index": s["spec"]["index"], "kind": s["spec"]["kind"], "topic": s["spec"]["topic"],
                "finals": len(s["finals"]), **{k: v for k, v in asdict(sc).items() if k != "added_lags"},
                "error": s["error"]} for s, sc in scores if not sc.equal]
    kinds = sorted({spec.kind for spec in specs})
    return {
        "viewers": len(specs), "kinds": {k: sum(spec.kind == k for spec in specs) for k in kinds},
        "reconnecting": len(leaving), "equal": sum(sc.equal for _, sc in scores),
        "reconnecting_equal": sum(sc.equal for _, sc in leaving),
        "reconnected": sum(s["reconnected"] for s in seen), "resumed": sum(s["resumed"] for s in seen),
        "lost": sum(s["lost"] for s in seen),
        "refused": sum(s["refused"] for s in seen), "redelivered": sum(s["redelivered"] for s in seen),
        "ended": sum(s["ended"] for s in seen),
        **{key: sum(getattr(sc, key) for _, sc in scores)
           for key in ("missing", "duplicated", "out_of_order", "wrong_text", "foreign")},
        "added_lag_ms": percentiles(staying, 1000, 1),
        "added_lag_ms_by_kind": {k: percentiles([lag for s, sc in scores if s["spec"]["kind"] == k
                                                 and s["spec"]["reconnect_at"] is None for lag in sc.added_lags],
                                                1000, 1) for k in kinds},
        "reconnecting_added_lag_ms": percentiles([lag for _, sc in leaving for lag in sc.added_lags], 1000, 1),
        "unequal_viewers": unequal[:50],
    }


# -- the broker --------------------------------------------------------------------------------------


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[tuple[str, str, int]]:
    """Debian's mosquitto on two free loopback ports: the server's MQTT URL, the viewers' websockets URL, its pid."""
    port, ws_port = _free_port(), _free_port()
    config = folder / "mosquitto.conf"
    # As root, mosquitto would switch to its own user; a large queue: a persistent session's finals while it is away.
    config.write_text(f"allow_anonymous true\nuser root\nmax_queued_messages {MAX_QUEUED}\n"
                      f"listener {port} 127.0.0.1\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n")
    with open(folder / "mosquitto.log", "w") as log:
        broker = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for listener in (port, ws_port):
            _wait_listening(listener, broker)
        yield f"mqtt://127.0.0.1:{port}", f"ws://127.0.0.1:{ws_port}/mqtt", broker.pid
    finally:
        broker.terminate()
        broker.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"mosquitto is not listening on {port} (exit status {process.poll()})")


# -- the report --------------------------------------------------------------------------------------


def per_thousand(phases: dict[str, dict]) -> None:
    """Each viewer phase's CPU (% of one core) and memory (MiB) per 1,000 viewers, the server's and (for MQTT
    viewers) the broker's: CPU over the baselines' mean (the server's event loop, its main thread, where /proc has
    it: its model threads take whatever CPU is left, so the process's total says little); memory of the viewers
    connected (and, as streaming_mb_per_1000, the streaming peak over the baselines' mean peak)."""
    baselines = [p for p in phases.values() if not p["viewers"]]
    for phase in phases.values():
        if not phase["viewers"]:
            continue
        thousands = phase["viewers"] / 1000
        for side in ("server", "broker") if "mqtt" in phase["kinds"] else ("server",):
            own = phase[side]
            cpu = "loop_cpu_cores" if own.get("loop_cpu_cores") is not None else "cpu_cores"
            base_cpu = _mean([p[side][cpu] for p in baselines])
            base_peak = _mean([p[side]["rss_mb_peak"] for p in baselines])
            own["cpu_percent_per_1000"] = _per(own[cpu], base_cpu, thousands, 100)
            own["mb_per_1000"] = _per(own["rss_mb_connected"], own["rss_mb_before"], thousands)
            own["streaming_mb_per_1000"] = _per(own["rss_mb_peak"], base_peak, thousands)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _per(value: float | None, base: float | None, thousands: float, scale: float = 1.0) -> float | None:
    return round(scale * (value - base) / thousands, 1) if value is not None and base is not None else None


def acceptance(phases: dict[str, dict]) -> list[dict[str, Any]]:
    """Each acceptance item per viewer phase, with its figure: holds True, False, or None (not measured).
    "Without viewers" is the baselines' finals pooled."""
    base = percentiles([lag for p in phases.values() if not p["viewers"] for lag in p["speaker_final_lags_s"]])["p95"]
    items: list[dict[str, Any]] = []
    for name, phase in phases.items():
        if not phase["viewers"]:
            continue
        added, p95 = phase["added_lag_ms"]["p95"], phase["speaker_final_lag_s"]["p95"]
        growth = round(p95 - base, 3) if p95 is not None and base is not None else None
        items += [
            {"phase": name, "item": "every viewer's finals equal its speaker's",
             "figure": f"{phase['equal']}/{phase['viewers']}", "holds": phase["equal"] == phase["viewers"]},
            {"phase": name, "item": f"added delivery lag p95 <= {ADDED_LAG_TARGET_MS:g} ms", "figure": f"{added} ms",
             "holds": None if added is None else added <= ADDED_LAG_TARGET_MS},
            {"phase": name, "item": f"speakers' final lag p95 grows by <= {SPEAKER_LAG_GROWTH_S:g} s",
             "figure": f"{base} s -> {p95} s ({growth:+g} s)" if growth is not None else "-",
             "holds": None if growth is None else growth <= SPEAKER_LAG_GROWTH_S}]
    return items


def markdown(phases: dict[str, dict], held: list[dict[str, Any]]) -> str:
    """The phases as a table, then the acceptance items."""
    header = ["phase", "viewers", "finals equal the speaker's", "added lag p50 / p95 / p99 ms",
              "speakers' final lag p50 / p95 s", "server CPU cores (its event loop)",
              "server event-loop CPU % / 1,000 viewers", "server MiB / 1,000 viewers connected",
              "broker CPU % / MiB per 1,000 viewers", "viewer clients' CPU cores"]
    lines = [harness.table(header, [_row(name, phase) for name, phase in phases.items()]), ""]
    lines += [f"- {h['phase']}: {h['item']}: {h['figure']}: "
              f"{'not measured' if h['holds'] is None else 'holds' if h['holds'] else 'misses'}" for h in held]
    return "\n".join(lines)


def _row(name: str, p: dict[str, Any]) -> list[str]:
    def cell(value: object) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    def slash(values: dict, keys: tuple[str, ...]) -> str:
        return " / ".join(cell(values[k]) for k in keys)

    kinds = ", ".join(f"{n} {'MQTT/ws' if k == 'mqtt' else k.upper()}" for k, n in p["kinds"].items())
    reconnecting = f", {p['reconnecting']} reconnecting" if p["reconnecting"] else ""
    equal = f"{p['equal']}/{p['viewers']}" + (f" ({p['reconnecting_equal']}/{p['reconnecting']} reconnecting)"
                                              if p["reconnecting"] else "")
    server, broker = p["server"], p["broker"]
    return [name, f"{p['viewers']} ({kinds}{reconnecting})" if p["viewers"] else "0", equal if p["viewers"] else "-",
            slash(p["added_lag_ms"], ("p50", "p95", "p99")), slash(p["speaker_final_lag_s"], ("p50", "p95")),
            f"{cell(server['cpu_cores'])} ({cell(server['loop_cpu_cores'])})", cell(server.get("cpu_percent_per_1000")),
            cell(server.get("mb_per_1000")),
            f"{cell(broker.get('cpu_percent_per_1000'))} / {cell(broker.get('mb_per_1000'))}",
            cell(p["clients_cpu_cores"])]


# -- main --------------------------------------------------------------------------------------------


def programmes(clips: list[Clip], streams: int, duration_s: float) -> list[np.ndarray]:
    """Each speaker's audio: `duration_s` of clips joined by 1 s of silence, a different first clip each (soak's)."""
    audios = {clip_id: audio.numpy() for clip_id, audio in harness.read_audio(clips).items()}
    return [soak.programme(clips, audios, k * 7, duration_s)[0] for k in range(streams)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of audio per speaker and phase")
    parser.add_argument("--streams", type=int, default=4, help="speakers, one topic each")
    parser.add_argument("--viewers", type=int, default=500,
                        help="viewers per topic (server phase: half server-sent events, half WebSocket)")
    parser.add_argument("--reconnecting", type=int, default=20, help="viewers per phase that leave and come back")
    parser.add_argument("--processes", type=int, default=2, help="viewer processes")
    parser.add_argument("--warm-up", type=float, default=15.0, help="seconds the speakers stream alone first")
    parser.add_argument("--skip-broker", action="store_true", help="no MQTT phase")
    parser.add_argument("--threads", type=int, default=2, help="the started server's inference threads")
    parser.add_argument("--model", default="tiny.en", help="the started server's (a name or a path)")
    parser.add_argument("--manifest", type=Path, default=harness.default_manifest(), help="clips to stream")
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--broker", default=None,
                        help="with --url: the websockets listener (ws://host:port/mqtt) of the broker it publishes to")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "viewers.json")
    args = parser.parse_args()
    if args.viewers < 2 or args.streams < 1 or args.duration < 5 or args.processes < 1:
        parser.error("--viewers >= 2, --streams >= 1, --duration >= 5 and --processes >= 1 are required")
    clips = [c for c in harness.read_clips(args.manifest) if c.kind != "hard" and c.duration < 30] or \
        harness.read_clips(args.manifest)
    broker_phase = not args.skip_broker and (args.url is None or args.broker is not None)
    options = ["--threads", str(args.threads), "--device", "cpu", "--model", args.model, "--log-format", "text",
               "--max-sessions", str(max(16, args.streams)), "--max-pending-per-address", "0"]
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        broker = args.broker if broker_phase else None
        broker_pid = listener_pid(broker) if broker else None
        if broker_phase and args.url is None:
            mqtt_url, broker, broker_pid = stack.enter_context(mosquitto(Path(folder)))
            options += ["--mqtt-url", mqtt_url]
        url = stack.enter_context(harness.serving(options, args.url, log=harness.RESULTS / "viewers-server.log"))
        setup = Setup(url, broker, (listener_pid(url), broker_pid), programmes(clips, args.streams, args.duration),
                      args.duration, args.viewers, args.reconnecting, args.processes,
                      f"{int(time.time()) % 100_000:05d}")
        phases: dict[str, dict] = {}
        warm_up(setup, args.warm_up)
        for name, kinds in (("baseline", []), ("server", ["sse", "ws"]), ("broker", ["mqtt"]),
                            ("baseline-again", [])):
            if name == "broker" and not broker_phase:
                continue
            phases[name] = run_phase(name, setup, kinds)  # type: ignore[arg-type]
            time.sleep(SETTLE_S)
    per_thousand(phases)
    held = acceptance(phases)
    meta = harness.metadata(
        url=args.url or f"captioner serve {' '.join(options)} (started by bench/viewers.py)",
        broker=broker and (broker if args.url else f"mosquitto (started by bench/viewers.py), viewers on {broker}"),
        setting=f"server, broker, {args.streams} speakers and {args.processes} viewer processes on the same "
                f"{os.cpu_count()} cores", duration_s=args.duration, streams=args.streams,
        viewers_per_topic=args.viewers, reconnecting=args.reconnecting, processes=args.processes,
        manifest=str(args.manifest), clips=len(clips))
    path = harness.write_json(args.out, {**meta, "acceptance": held, "phases": phases})
    print(f"\n{meta['setting']}; {args.duration:g} s per phase\n")
    print(markdown(phases, held))
    print(f"\n{path}")


if __name__ == "__main__":
    main()
