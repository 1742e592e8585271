"""The MQTT caption feed against a real broker (Debian's mosquitto) on a loopback port."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import aiomqtt
import pytest
from client import read_pcm16, stream
from support import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    def __init__(self, tmp_path: Path, port: int) -> None:
        self.port = port
        self.config = tmp_path / "mosquitto.conf"
        # As root, mosquitto would switch to its own user, which cannot save its state in tmp_path.
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
                               f"persistence true\npersistence_location {tmp_path}/\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def broker(tmp_path):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (tests/run.sh installs it with apt-get)")
    broker = Broker(tmp_path, free_port())
    yield broker
    broker.stop()


async def subscribe(port: int, topic: str, into: list, ready: asyncio.Event, stop: asyncio.Event,
                    durable: bool = False) -> None:
    """Collect messages; a durable viewer has a broker-side session that keeps QoS 1 messages while it is away."""
    identifier = "durable-viewer" if durable else f"viewer-{id(into)}"
    async with aiomqtt.Client("127.0.0.1", port, identifier=identifier, clean_session=not durable) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            payload = json.loads(message.payload) if message.payload else {}  # empty: a retained partial cleared
            into.append((str(message.topic), message.qos, message.retain, payload))
            if stop.is_set():
                break


async def register_durable_viewer(port: int, topic: str) -> None:
    """Create the viewer's broker-side session (kept while it is away, and across broker restarts)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="durable-viewer", clean_session=False) as client:
        await client.subscribe(f"captioner/{topic}/#", qos=1)


def durable_finals(port: int, topic: str) -> list[dict]:
    """The finals the durable viewer gets once it reconnects (up to the session's end), deduplicated
    (QoS 1 is at least once)."""

    async def collect() -> list:
        received: list = []
        ready, stop = asyncio.Event(), asyncio.Event()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(r[3].get("state") == "ended" for r in received):
            watcher = asyncio.create_task(subscribe(port, f"captioner/{topic}/#", received, ready, stop, True))
            await asyncio.sleep(1.0)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return received

    finals = [r[3] for r in asyncio.run(collect()) if r[0] == f"captioner/{topic}/final"]
    return list({f["segment"]: f for f in finals}.values())


async def stream_and_watch(server, broker_port: int, pcm: bytes, rate: int, topic: str = "room-12", query: str = ""):
    received: list = []
    ready, stop = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(subscribe(broker_port, f"captioner/{topic}/#", received, ready, stop))
    await asyncio.wait_for(ready.wait(), 10)
    outcome = await stream(server.url, pcm, rate, pace=3.0, query=f"topic={topic}{query}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r[3].get("state") == "ended" for r in received):
        await asyncio.sleep(0.05)
    stop.set()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return outcome, received


def native(message: dict) -> dict:
    """A feed's message as the speaker's client got it: without the final's id and the stream's id."""
    return {k: v for k, v in message.items() if k not in ("id", "session")}


def test_finals_arrive_in_order_with_qos_1(make_server, broker, samples):
    broker.start()
    server = make_server(mqtt_url=f"mqtt://127.0.0.1:{broker.port}")
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    outcome, received = asyncio.run(stream_and_watch(server, broker.port, pcm, rate, query="&diarize=true"))
    finals = [r for r in received if r[0] == "captioner/room-12/final"]
    assert [native(f[3]) for f in finals] == outcome.finals  # same messages, same order
    assert len({f[3]["id"] for f in finals}) == len(finals)  # each with its own id
    assert all(f[3]["speaker"] == "S1" for f in finals if f[3]["words"])  # with their speaker labels
    assert all(f[1] == 1 and not f[2] for f in finals)
    assert any(r[0] == "captioner/room-12/partial" for r in received)
    states = [r[3]["state"] for r in received if r[0] == "captioner/room-12/status"]
    assert states == ["started", "ended"]
    status = json.loads(urllib.request.urlopen(server.http + "/readyz").read())
    assert status["mqtt"] == "ok"


def test_broker_away_loses_no_final(make_server, broker, samples):
    """The broker goes away: WebSocket clients are served and readyz says degraded; when it is back,
    the finals queued meanwhile are published in order (a durable viewer gets every one)."""
    broker.start()
    asyncio.run(register_durable_viewer(broker.port, "hall"))
    broker.stop()
    server = make_server(mqtt_url=f"mqtt://127.0.0.1:{broker.port}")
    status = json.loads(urllib.request.urlopen(server.http + "/readyz").read())
    assert status["ready"] and status["mqtt"] == "degraded"
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    outcome = asyncio.run(stream(server.url, pcm, rate, pace=3.0, query="topic=hall"))
    assert outcome.close_code == 1000 and outcome.finals
    broker.start()
    assert [native(f) for f in durable_finals(broker.port, "hall")] == outcome.finals


def test_broker_killed_mid_stream_loses_no_final(make_server, broker, samples):
    """The broker dies while a session is streaming and comes back: every final reaches a durable viewer,
    in order, and the WebSocket client gets all of its finals meanwhile."""
    broker.start()
    asyncio.run(register_durable_viewer(broker.port, "stage"))
    server = make_server(mqtt_url=f"mqtt://127.0.0.1:{broker.port}")
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=24)  # 12 s at 2x: the outage is 3-6 s in

    async def stream_through_outage():
        streaming = asyncio.create_task(stream(server.url, pcm, rate, pace=2.0, query="topic=stage"))
        await asyncio.sleep(3.0)
        await asyncio.to_thread(broker.stop)  # SIGTERM: a crash would also lose the broker's unsaved state
        await asyncio.sleep(3.0)
        degraded = json.loads(urllib.request.urlopen(server.http + "/readyz").read())["mqtt"]
        await asyncio.to_thread(broker.start)
        return await streaming, degraded

    outcome, degraded = asyncio.run(stream_through_outage())
    assert degraded == "degraded"
    assert outcome.close_code == 1000 and len([f for f in outcome.finals if f["text"]]) >= 2
    assert [native(f) for f in durable_finals(broker.port, "stage")] == outcome.finals
