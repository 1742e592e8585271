"""The MQTT caption feed: every session's captions published to a broker, for any number of viewers.

Topics, under the `mqtt_prefix` (default `captioner`), per caption topic (feeds.py):
`{prefix}/{topic}/final` (QoS 1, not retained: each final, with its id), `{prefix}/{topic}/partial`
(QoS 0, retained: the current partial), `{prefix}/{topic}/status` (QoS 1, retained: started /
ended), `{prefix}/{topic}/history` (QoS 1, retained: `{"type": "history", "finals": [...]}`, the
last `feed_late_finals` finals, for viewers that join late). Payloads are the caption feeds' JSON
messages (the native protocol's, with the stream's id as `session`): a viewer that subscribes to the
broker directly (docs/scaling.md) drops a final whose id it has seen, as QoS 1 may deliver twice.

Publishing never holds up a WebSocket client: messages wait in a bounded queue that a background
task empties while the broker is there; it reconnects with backoff, and a message leaves the queue
only once the broker has taken it, so finals survive a broker restart in order. A full queue drops
its oldest partial first, then its oldest final (counted in the metrics, and logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from .auth import topic_name
from .metrics import Metrics
from .settings import Settings

__all__ = ["Publisher", "parse_mqtt_url"]

log = logging.getLogger("captioner.mqtt")
MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    qos: int
    retain: bool
    kind: str  # final | partial | status | history


def parse_mqtt_url(url: str) -> dict:
    """aiomqtt.Client arguments from mqtt://[user:pass@]host[:port] or mqtts://..."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"MQTT URL must look like mqtt://[user:pass@]host[:port], not {url!r}")
    secure = parts.scheme == "mqtts"
    return {
        "hostname": parts.hostname,
        "port": parts.port or (8883 if secure else 1883),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls_context": ssl.create_default_context() if secure else None,
    }


class Publisher:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.client_args = parse_mqtt_url(settings.mqtt_url or "")
        self.prefix = settings.mqtt_prefix.rstrip("/")
        self.limit = settings.mqtt_queue
        self.metrics = metrics
        self.connected = False
        self._queue: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float = 5.0) -> None:
        """Give the queue a moment to drain (status and last finals), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue and self.connected and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- what the feeds publish (feeds.py) --------------------------------------------------------

    def status(self, topic: str, session: str, state: str) -> None:
        """A stream started or ended; at its end its retained partial is cleared (an empty retained message)."""
        payload = json.dumps({"type": "status", "session": session, "state": state})
        self._put(Message(self._topic(topic, "status"), payload, 1, True, "status"))
        if state == "ended":
            self._put(Message(self._topic(topic, "partial"), "", 0, True, "partial"))

    def final(self, topic: str, payload: str, late: list[str]) -> None:
        """A final's message, and the last finals (late: their messages) for the retained history."""
        self._put(Message(self._topic(topic, "final"), payload, 1, False, "final"))
        history = '{"type": "history", "finals": [' + ", ".join(late) + "]}"
        self._put(Message(self._topic(topic, "history"), history, 1, True, "history"))

    def partial(self, topic: str, payload: str) -> None:
        self._put(Message(self._topic(topic, "partial"), payload, 0, True, "partial"))

    def _topic(self, topic: str, leaf: str) -> str:
        return f"{self.prefix}/{topic_name(topic)}/{leaf}"

    def _put(self, message: Message) -> None:
        if len(self._queue) >= self.limit:
            victim = next((m for m in self._queue if m.kind in ("partial", "history")), self._queue[0])
            self._queue.remove(victim)
            self.metrics.mqtt_dropped.labels(victim.kind).inc()
            if victim.kind in ("final", "status"):
                log.warning("MQTT queue full: dropped a message", extra={"topic": victim.topic, "kind": victim.kind})
        self._queue.append(message)
        self._wake.set()

    # -- the background task ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(**self.client_args, identifier=f"captioner-{os.getpid()}-{id(self):x}",
                                          timeout=5) as client:
                    self.connected = True
                    backoff = 0.5
                    log.info("MQTT connected", extra={"broker": self.client_args["hostname"]})
                    lost = asyncio.create_task(_until_disconnected(client))
                    try:
                        await self._publish_queue(client, lost)
                    finally:
                        lost.cancel()
                        await asyncio.gather(lost, return_exceptions=True)
            except aiomqtt.MqttError as e:
                if self.connected:
                    log.warning("MQTT connection lost", extra={"error": str(e)})
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _publish_queue(self, client: aiomqtt.Client, lost: asyncio.Task[None]) -> None:
        """Publish queued messages in order as they come, until the connection is lost (MqttError)."""
        while True:
            while self._queue:
                message = self._queue[0]
                await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
                if self._queue and self._queue[0] is message:
                    self._queue.popleft()
            self._wake.clear()
            wake = asyncio.create_task(self._wake.wait())
            await asyncio.wait({wake, lost}, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if lost.done():
                lost.result()
                raise aiomqtt.MqttError("the broker closed the connection")


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Returns or raises MqttError when the broker connection ends (the publisher subscribes to nothing),
    so that a lost broker is noticed while the queue is idle."""
    async for _ in client.messages:
        pass
