"""Caption feeds: each topic's captions, from its speakers' streams to its viewers and sinks.

A stream's events go, encoded once, to every viewer of its topic (server-sent events or a WebSocket,
viewers.py), to the MQTT broker (mqtt.py), to the topic's live HLS subtitles (subtitles.py) and to the
YouTube Live ingestion URL the operator configured for it (youtube.py). Each final gets an id,
`<feed>-<n>`, n rising per topic; a topic keeps its last `feed_history` finals, so that a viewer that
reconnects with the id of the last final it got (Last-Event-ID, ?after=) gets every one it missed, and a
late joiner the last `feed_late_finals`.

Fan-out never holds up a stream: it runs after the speaker's own messages are queued (call_soon), it
writes to sockets without waiting, and a viewer that leaves more than `max_viewer_unsent_bytes` unread
is dropped (it may reconnect and resume from its last id). The model and the viewers share no lock.

A topic's timeline (HLS cue times, transcripts) starts when the first audio of its first stream
arrived: a stream's audio time t is its origin (the Unix time of its first audio) plus t.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from typing import Protocol as Interface

from captioner.server.errors import Overloaded
from captioner.stream.events import Event, Final, event_to_dict

from .metrics import Metrics
from .settings import Settings
from .subtitles import LiveSubtitles

if TYPE_CHECKING:  # the MQTT client loads only when a broker is configured
    from .mqtt import Publisher
    from .youtube import YouTubeSinks

__all__ = ["Feed", "Feeds", "Item", "Viewer"]

log = logging.getLogger("captioner.server")

_COUNT = re.compile(r"[0-9]{1,15}")  # a final's number in its id (ASCII digits: str.isdigit takes others)
KEEPALIVE_S = 15.0  # a comment to idle server-sent event viewers, so that proxies keep their connections
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Item:
    """One message of a feed, encoded once for every viewer."""

    text: str  # the JSON message (WebSocket viewers, MQTT)
    sse: bytes  # the same as a server-sent event

    @classmethod
    def of(cls, message: dict[str, Any], event_id: str | None = None) -> Item:
        text = json.dumps(message)
        head = f"id: {event_id}\n" if event_id is not None else ""
        return cls(text, f"{head}data: {text}\n\n".encode())


class Viewer(Interface):
    """One viewer of a topic, as its feed sees it (viewers.py)."""

    def send(self, item: Item) -> None:
        """Write it now, without waiting on the socket."""

    @property
    def unsent_bytes(self) -> int: ...

    def drop(self) -> None:
        """It reads too slowly: disconnect it now (it may resume from its last final's id)."""

    def close(self) -> None:
        """The server stops: disconnect it after what was sent."""

    def keep_alive(self) -> None: ...


@dataclass(frozen=True)
class Entry:
    """A final in a topic's history."""

    n: int
    item: Item
    message: dict[str, Any]  # with start and end on the topic's timeline (transcripts)


@dataclass
class Speaker:
    """A stream that publishes to a topic."""

    origin: float | None = None  # Unix time of its audio's time 0
    heard: float = 0.0  # every final of it that starts before this (its audio seconds) is out


class Feed:
    """One topic: its history of finals, current partials, live streams, viewers and subtitles."""

    def __init__(self, topic: str, settings: Settings, now: float) -> None:
        self.topic = topic
        self.settings = settings
        self.key = f"{int(now * 1000):x}"  # the ids of this feed's finals start with it
        self.n = 0  # finals so far
        self.history: deque[Entry] = deque(maxlen=settings.feed_history)
        self.partials: dict[str, Item] = {}  # per stream: its current partial
        self.speakers: dict[str, Speaker] = {}
        self.viewers: set[Viewer] = set()
        self.epoch: float | None = None  # Unix time of timeline 0: the first audio of its first stream
        self.subtitles: LiveSubtitles | None = None
        self.idle_since: float | None = None  # no stream and no viewer since then

    @property
    def live(self) -> bool:
        return bool(self.speakers)

    def start(self, stream: str) -> Item:
        self.speakers[stream] = Speaker()
        self.idle_since = None
        if self.subtitles is not None:
            self.subtitles.resume()
        return Item.of({"type": "status", "session": stream, "state": "started"})

    def apply(self, stream: str, event: Event, origin: float) -> tuple[Item, Entry | None]:
        """A stream's event (its audio's time 0 at Unix time origin) as a message, and its history entry if final."""
        speaker = self.speakers[stream]
        if speaker.origin is None:
            speaker.origin = origin
            if self.epoch is None:
                self.epoch = origin
                self.subtitles = live_subtitles(self.settings, origin)
        message = {**event_to_dict(event), "session": stream}
        entry = None
        if isinstance(event, Final):
            entry = self._final(speaker, event, message)
            self.partials.pop(stream, None)
            item = entry.item
        else:
            item = self.partials[stream] = Item.of(message)
        speaker.heard = max(speaker.heard, event.end if isinstance(event, Final) else event.start)
        self._heard()
        return item, entry

    def end(self, stream: str, clean: bool) -> Item | None:
        """The stream is done; clean: its client ended it (the subtitles end then, unless another stream goes on)."""
        if self.speakers.pop(stream, None) is None:
            return None
        self.partials.pop(stream, None)
        if self.subtitles is not None:
            if clean and not self.live:
                self.subtitles.end()
            else:
                self._heard()
        return Item.of({"type": "status", "session": stream, "state": "ended"})

    def timeline(self, speaker: Speaker, t: float) -> float:
        assert speaker.origin is not None and self.epoch is not None
        return speaker.origin + t - self.epoch

    def _final(self, speaker: Speaker, event: Final, message: dict[str, Any]) -> Entry:
        self.n += 1
        event_id = f"{self.key}-{self.n}"
        item = Item.of({"type": "final", "id": event_id, **{k: v for k, v in message.items() if k != "type"}},
                       event_id)
        start, end = self.timeline(speaker, event.start), self.timeline(speaker, event.end)
        words = [{**w, "start": self.timeline(speaker, w["start"]), "end": self.timeline(speaker, w["end"])}
                 for w in message["words"]]
        entry = Entry(self.n, item, {**message, "start": start, "end": end, "words": words})
        self.history.append(entry)
        if self.subtitles is not None and event.text.strip():
            self.subtitles.add(start, end, event.text.strip(), event.speaker)
        return entry

    def _heard(self) -> None:
        """Tell the subtitles how far every live stream's finals are out."""
        heard = [self.timeline(s, s.heard) for s in self.speakers.values() if s.origin is not None]
        if self.subtitles is not None and heard:
            self.subtitles.heard(min(heard))

    def backlog(self, after: str | None) -> list[Item]:
        """What a joining viewer gets before the live feed: the finals after the id it last got (all that
        are kept, and a gap notice, when that id is older than the history or not this feed's), or else the
        last feed_late_finals; then the current partials."""
        items = [Item.of({"type": "feed", "topic": self.topic, "live": self.live})]
        finals = list(self.history)
        if after is None:
            finals = self.late()
        else:
            key, _, n = after.partition("-")
            last = int(n) if key == self.key and _COUNT.fullmatch(n) else -1  # not this feed's: all that is kept
            if last < 0 or (finals and finals[0].n > last + 1):
                items.append(Item.of({"type": "gap", "message": "finals before these are no longer kept"}))
            finals = [entry for entry in finals if entry.n > last]
        return items + [entry.item for entry in finals] + list(self.partials.values())

    def late(self) -> list[Entry]:
        """The finals a viewer that joins late gets."""
        n = self.settings.feed_late_finals
        return list(self.history)[-n:] if n else []

    def transcript(self) -> list[dict[str, Any]]:
        """The finals kept, as native messages with times on the topic's timeline."""
        return [entry.message for entry in self.history]


def live_subtitles(settings: Settings, epoch: float) -> LiveSubtitles:
    """A topic's live subtitles, its timeline starting at Unix time `epoch`."""
    return LiveSubtitles(epoch, settings.hls_segment_s, settings.hls_window, settings.hls_max_delay_s,
                         settings.hls_mpegts)


class Feeds:
    """Every topic's feed and the sinks: a stream's events come in, viewers join and leave."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publisher: Publisher | None = None  # the MQTT client, when a broker is configured
        self.youtube: YouTubeSinks | None = None  # when ingestion URLs are configured
        self.feeds: dict[str, Feed] = {}
        self.viewers = 0
        self._topics: dict[str, str] = {}  # stream id -> its topic
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Keep-alives for viewers; the MQTT client and YouTube sinks, if configured."""
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())
        if self.settings.mqtt_url:
            from .mqtt import Publisher

            self.publisher = Publisher(self.settings, self.metrics)
            self.publisher.start()
        if self.settings.youtube_captions:
            from .youtube import YouTubeSinks

            self.youtube = YouTubeSinks.from_settings(self.settings, self.metrics)
            self.youtube.start()

    async def stop(self) -> None:
        """The server stops: the streams' last events out, every viewer disconnected, the sinks drained."""
        await asyncio.sleep(0)  # the events the streams' pumps handed over (call_soon) go out first
        if self._task is not None:
            self._task.cancel()
        for feed in self.feeds.values():
            for viewer in list(feed.viewers):
                viewer.close()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.youtube is not None:
            await self.youtube.stop()

    # -- speakers (delivery.py), each step after the speaker's own messages (call_soon) ----------------

    def started(self, stream: str, topic: str) -> None:
        self._topics[stream] = topic
        asyncio.get_running_loop().call_soon(self._started, stream, topic)

    def event(self, stream: str, event: Event, origin: float) -> None:
        """An event of a stream whose audio's time 0 was at Unix time `origin`."""
        topic = self._topics.get(stream)
        if topic is not None:
            asyncio.get_running_loop().call_soon(self._event, topic, stream, event, origin, time.monotonic())

    def ended(self, stream: str, clean: bool) -> None:
        """The stream is done; clean: its client ended it."""
        topic = self._topics.pop(stream, None)
        if topic is not None:
            asyncio.get_running_loop().call_soon(self._ended, stream, topic, clean)

    def _started(self, stream: str, topic: str) -> None:
        feed = self._feed(topic)
        self._fan_out(feed, feed.start(stream))
        if self.publisher is not None:
            self.publisher.status(topic, stream, "started")

    def _event(self, topic: str, stream: str, event: Event, origin: float, arrived: float) -> None:
        feed = self.feeds.get(topic)
        if feed is None or stream not in feed.speakers:
            return
        item, entry = feed.apply(stream, event, origin)
        self._fan_out(feed, item)
        if self.publisher is not None:
            if entry is None:
                self.publisher.partial(topic, item.text)
            else:
                self.publisher.final(topic, item.text, [late.item.text for late in feed.late()])
        if self.youtube is not None and isinstance(event, Final) and event.text.strip():
            self.youtube.caption(topic, origin + event.start, event.text.strip())
        self.metrics.fanout.observe(time.monotonic() - arrived)

    def _ended(self, stream: str, topic: str, clean: bool) -> None:
        feed = self.feeds.get(topic)
        item = feed.end(stream, clean) if feed is not None else None
        if feed is None or item is None:
            return
        self._fan_out(feed, item)
        if self.publisher is not None:
            self.publisher.status(topic, stream, "ended")
        self._idle(feed)

    # -- viewers (viewers.py) ---------------------------------------------------------------------

    def join(self, topic: str, viewer: Viewer, after: str | None) -> None:
        """A viewer joins a topic: its backlog is sent, then the live feed. Raises Overloaded (503)."""
        self.admits(topic)
        feed = self.feeds.get(topic) or self._feed(topic, viewer=True)
        for item in feed.backlog(after):
            viewer.send(item)
        feed.viewers.add(viewer)
        feed.idle_since = None
        self.viewers += 1
        self.metrics.viewers.labels(topic).inc()

    def admits(self, topic: str) -> None:
        """Raises Overloaded (too_many_viewers) when another viewer of this topic would be over a limit."""
        if self.viewers >= self.settings.max_viewers:
            raise Overloaded(f"this server has {self.viewers} viewers, its most (max_viewers)", "too_many_viewers",
                             RETRY_AFTER_S)
        feed = self.feeds.get(topic)
        if feed is not None and len(feed.viewers) >= self.settings.max_viewers_per_topic:
            raise Overloaded(f"this topic has {len(feed.viewers)} viewers, its most (max_viewers_per_topic)",
                             "too_many_viewers", RETRY_AFTER_S)

    def leave(self, topic: str, viewer: Viewer) -> None:
        feed = self.feeds.get(topic)
        if feed is not None and viewer in feed.viewers:
            feed.viewers.discard(viewer)
            self.viewers -= 1
            self.metrics.viewers.labels(topic).dec()
            self._idle(feed)

    def _fan_out(self, feed: Feed, item: Item) -> None:
        limit = self.settings.max_viewer_unsent_bytes
        for viewer in list(feed.viewers):
            viewer.send(item)
            if viewer.unsent_bytes > limit:
                log.info("slow viewer: dropped", extra={"topic": feed.topic, "unsent_bytes": viewer.unsent_bytes})
                self.metrics.viewer_drops.labels("slow_reader").inc()
                viewer.drop()
                self.leave(feed.topic, viewer)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            for feed in self.feeds.values():
                for viewer in feed.viewers:
                    viewer.keep_alive()

    # -- the topics -------------------------------------------------------------------------------

    def _feed(self, topic: str, viewer: bool = False) -> Feed:
        """The topic's feed, made if new; past max_feed_topics the longest idle one is dropped to make room (a
        viewer's topic is refused when none is idle: Overloaded; a stream's is held all the same)."""
        feed = self.feeds.get(topic)
        if feed is not None:
            return feed
        now = time.time()
        for stale in [f for f in self.feeds.values() if now - (f.idle_since or now) > self.settings.feed_idle_s]:
            self._drop(stale)
        if len(self.feeds) >= self.settings.max_feed_topics:
            idle = [f for f in self.feeds.values() if f.idle_since is not None]
            if not idle and viewer:
                raise Overloaded(f"{len(self.feeds)} topics have viewers or streams, the most this server holds "
                                 "(max_feed_topics)", "too_many_viewers", RETRY_AFTER_S)
            if idle:
                self._drop(min(idle, key=lambda f: f.idle_since or 0.0))
        feed = self.feeds[topic] = Feed(topic, self.settings, now)
        return feed

    def _drop(self, feed: Feed) -> None:
        del self.feeds[feed.topic]
        try:
            self.metrics.viewers.remove(feed.topic)
        except KeyError:  # no viewer ever joined it
            pass

    def _idle(self, feed: Feed) -> None:
        if not feed.live and not feed.viewers:
            feed.idle_since = time.time()
