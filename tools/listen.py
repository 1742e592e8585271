"""Live captions in a terminal: `captioner listen` (a session's captions from the MQTT broker), and the
view `captioner replay` prints them with."""

from __future__ import annotations

import json
import shutil
import sys
from typing import TextIO

__all__ = ["LiveView", "listen"]


class LiveView:
    """Live captions on a terminal: finals printed once, the open segment's partial rewritten in place
    with its unstable tail dimmed; on a pipe, finals only, one per line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.open = False

    def show(self, t: float, message: dict) -> None:
        kind = message.get("type")
        if kind == "final" and message["text"]:
            self._line(message["text"] + "\n")
        elif kind == "partial" and self.tty:
            stable, text = message["stable"], message["text"]
            width = shutil.get_terminal_size().columns - 1  # a wrapped line could not be rewritten in place
            cut = max(0, len(text) - width)
            self._line(f"{stable[cut:]}\x1b[2m{text[max(cut, len(stable)):]}\x1b[0m", partial=True)

    def _line(self, text: str, partial: bool = False) -> None:
        if self.tty and self.open:
            self.out.write("\r\x1b[K")
        self.out.write(text)
        self.out.flush()
        self.open = partial

    def close(self) -> None:
        if self.tty and self.open:
            self.out.write("\r\x1b[K")
            self.open = False


def listen(mqtt_url: str, topic: str, prefix: str) -> int:
    """Print the captions of the sessions under prefix/topic as they come; an exit status."""
    import asyncio

    import aiomqtt

    from captioner.server.mqtt import parse_mqtt_url

    try:
        client_args = parse_mqtt_url(mqtt_url)
    except ValueError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return 2
    live = LiveView(sys.stdout)

    async def watch() -> None:
        async with aiomqtt.Client(**client_args) as client:
            await client.subscribe(f"{prefix}/{topic}/+", qos=1)
            async for message in client.messages:
                payload = json.loads(message.payload)
                if payload.get("type") in ("partial", "final"):
                    live.show(0.0, payload)

    try:
        asyncio.run(watch())
    except aiomqtt.MqttError as e:
        print(f"captioner: error: MQTT broker {mqtt_url}: {e}", file=sys.stderr)
        return 1
    return 0
