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
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from captioner.server.errors import Overloaded
from captioner.stream.events import Event, Final, event_to_dict

from .metrics import Metrics
from .settings import Settings
from .subtitles import LiveSubtitles

if TYPE_CHECKING:  # the MQTT client loads only when a broker is configured (app.py)
    from .mqtt import Publisher
    from .viewers import Viewer
    from .youtube import YouTubeSinks

__all__ = ["Feed", "Feeds", "Item"]

log = logging.getLogger("captioner.server")

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
        self.idle_since = now  # no stream and no viewer since then (while both are absent)

    @property
    def live(self) -> bool:
        return bool(self.speakers)

    def timeline(self, speaker: Speaker, t: float) -> float:
        assert speaker.origin is not None and self.epoch is not None
        return speaker.origin + t - self.epoch

    def backlog(self, after: str | None) -> list[Item]:
        """What a joining viewer gets before the live feed: the finals after the id it last got (all that
        are kept, and a gap notice, when that id is older than the history or not this feed's), or else the
        last feed_late_finals; then the current partials."""
        items = [Item.of({"type": "feed", "topic": self.topic, "live": self.live})]
        finals = list(self.history)
        if after is None:
            finals = finals[len(finals) - self.settings.feed_late_finals:] if self.settings.feed_late_finals else []
        else:
            key, _, n = after.partition("-")
            last = int(n) if key == self.key and n.isdigit() else -1
            if last < 0 or (finals and finals[0].n > last + 1):
                items.append(Item.of({"type": "gap", "message": "finals before these are no longer kept"}))
            finals = [entry for entry in finals if entry.n > last]
        return items + [entry.item for entry in finals] + list(self.partials.values())

    def transcript(self) -> list[dict[str, Any]]:
        """The finals kept, as native messages with times on the topic's timeline."""
        return [entry.message for entry in self.history]


class Feeds:
    """Every topic's feed, and the sinks: a stream's events come in, viewers join and leave."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publisher: Publisher | None = None  # set once the MQTT client runs
        self.youtube: YouTubeSinks | None = None
        self.feeds: dict[str, Feed] = {}
        self.viewers = 0
        self._topics: dict[str, str] = {}  # stream id -> its topic
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    def close(self) -> None:
        """The server stops: every viewer is disconnected (after what was queued for it)."""
        if self._task is not None:
            self._task.cancel()
        for feed in self.feeds.values():
            for viewer in list(feed.viewers):
                viewer.close()

    # -- speakers (delivery.py), each step after the speaker's own messages --------------------------

    def started(self, stream: str, topic: str) -> None:
        self._topics[stream] = topic
        asyncio.get_running_loop().call_soon(self._started, stream, topic)

    def event(self, stream: str, event: Event, origin: float) -> None:
        """An event of a stream whose audio's time 0 was at Unix time `origin`."""
        topic = self._topics.get(stream)
        if topic is not None:
            asyncio.get_running_loop().call_soon(self._event, topic, stream, event, origin, time.monotonic())

    def ended(self, stream: str, clean: bool) -> None:
        """The stream is done; clean: its client ended it (the topic's subtitles end then, unless it goes on)."""
        topic = self._topics.pop(stream, None)
        if topic is not None:
            asyncio.get_running_loop().call_soon(self._ended, stream, topic, clean)

    def _started(self, stream: str, topic: str) -> None:
        feed = self._feed(topic)
        feed.speakers[stream] = Speaker()
        feed.idle_since = None
        if feed.subtitles is not None:
            feed.subtitles.resume()
        self._fan_out(feed, Item.of({"type": "status", "session": stream, "state": "started"}))
        if self.publisher is not None:
            self.publisher.status(topic, stream, "started")

    def _event(self, topic: str, stream: str, event: Event, origin: float, arrived: float) -> None:
        feed = self.feeds.get(topic)
        if feed is None or stream not in feed.speakers:
            return
        speaker = feed.speakers[stream]
        if speaker.origin is None:
            speaker.origin = origin
            if feed.epoch is None:
                feed.epoch = origin
                feed.subtitles = self.subtitles(origin)
        message = {**event_to_dict(event), "session": stream}
        if isinstance(event, Final):
            self._final(feed, speaker, stream, event, message)
        else:
            feed.partials[stream] = item = Item.of(message)
            speaker.heard = max(speaker.heard, event.start)
            self._fan_out(feed, item)
            if self.publisher is not None:
                self.publisher.partial(topic, item.text)
        self._heard(feed)
        self.metrics.fanout.observe(time.monotonic() - arrived)

    def _final(self, feed: Feed, speaker: Speaker, stream: str, event: Final, message: dict[str, Any]) -> None:
        feed.n += 1
        event_id = f"{feed.key}-{feed.n}"
        item = Item.of({"type": "final", "id": event_id, **{k: v for k, v in message.items() if k != "type"}},
                       event_id)
        start, end = feed.timeline(speaker, event.start), feed.timeline(speaker, event.end)
        words = [{**w, "start": feed.timeline(speaker, w["start"]), "end": feed.timeline(speaker, w["end"])}
                 for w in message["words"]]
        feed.history.append(Entry(feed.n, item, {**message, "start": start, "end": end, "words": words}))
        feed.partials.pop(stream, None)
        speaker.heard = max(speaker.heard, event.end)
        if feed.subtitles is not None and event.text.strip():
            feed.subtitles.add(start, end, event.text.strip(), event.speaker)
        self._fan_out(feed, item)
        if self.publisher is not None:
            self.publisher.final(feed.topic, item.text, [entry.item.text for entry in self._late(feed)])
        if self.youtube is not None and event.text.strip():
            assert speaker.origin is not None
            self.youtube.caption(feed.topic, speaker.origin + event.start, event.text.strip())

    def _ended(self, stream: str, topic: str, clean: bool) -> None:
        feed = self.feeds.get(topic)
        if feed is None or feed.speakers.pop(stream, None) is None:
            return
        feed.partials.pop(stream, None)
        self._fan_out(feed, Item.of({"type": "status", "session": stream, "state": "ended"}))
        if self.publisher is not None:
            self.publisher.status(topic, stream, "ended")
        if feed.subtitles is not None:
            if clean and not feed.live:
                feed.subtitles.end()
            else:
                self._heard(feed)
        self._idle(feed)

    def _heard(self, feed: Feed) -> None:
        """Tell the subtitles how far every live stream's finals are out."""
        heard = [feed.timeline(s, s.heard) for s in feed.speakers.values() if s.origin is not None]
        if feed.subtitles is not None and heard:
            feed.subtitles.heard(min(heard))

    def subtitles(self, epoch: float) -> LiveSubtitles:
        """A topic's live subtitles, its timeline starting at Unix time `epoch`."""
        s = self.settings
        return LiveSubtitles(epoch, s.hls_segment_s, s.hls_window, s.hls_max_delay_s, s.hls_mpegts)

    def _late(self, feed: Feed) -> list[Entry]:
        n = self.settings.feed_late_finals
        return list(feed.history)[-n:] if n else []

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

    # -- the feeds ----------------------------------------------------------------------------------

    def _feed(self, topic: str, viewer: bool = False) -> Feed:
        """The topic's feed, made if new; past max_feed_topics the longest idle one is dropped to make room (a
        viewer's topic is refused when none is idle: Overloaded; a stream's is held all the same)."""
        feed = self.feeds.get(topic)
        if feed is not None:
            return feed
        now = time.time()
        idle = [f for f in self.feeds.values() if f.idle_since is not None]
        for stale in [f for f in idle if now - (f.idle_since or now) > self.settings.feed_idle_s]:
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

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            for feed in self.feeds.values():
                for viewer in feed.viewers:
                    viewer.keep_alive()
