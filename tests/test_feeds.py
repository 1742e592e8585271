"""Caption feeds: a session's captions read by viewers (server-sent events, WebSocket), resumed after a lost
connection, downloaded as transcripts, read by ffmpeg as live HLS subtitles and posted to YouTube Live; viewer
tokens that only read. A real server on a fake engine, real clients on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest
import srt
from client import SseReader, native, read_pcm16, stream
from test_youtube import Receiver
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captioner.server.auth import Grant, TokenTable
from captioner.server.feeds import Feeds, Item
from captioner.server.metrics import Metrics
from captioner.server.settings import load_settings

FFMPEG = shutil.which("ffmpeg")


async def ws_viewer(url: str, path: str, into: list[dict]) -> None:
    """A WebSocket viewer: every message until a stream's status says it ended; then it closes."""
    async with connect(url + path) as ws:
        async for message in ws:
            into.append(json.loads(message))
            if into[-1] == {**into[-1], "type": "status", "state": "ended"}:
                return


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def speech(samples) -> tuple[bytes, int]:
    return read_pcm16(samples["1688-142285-0000"]["path"])


async def watch_while_speaking(server, speech, viewers, topic: str = "room", pace: float = 6.0, query: str = ""):
    """Viewers (coroutines) read while a speaker streams to the topic; the speaker's outcome once all are done."""
    tasks = [asyncio.create_task(v) for v in viewers]
    await asyncio.sleep(0.3)
    outcome = await stream(server.url, *speech, pace=pace, query=f"topic={topic}{query}")
    await asyncio.sleep(0.5)
    return outcome, tasks


def test_sse_and_websocket_viewers_get_the_speakers_finals_with_ids(fake_server, speech):
    """Both kinds of viewer get every final of the speaker once, in order, each with its own id, then the status."""
    sse, received = SseReader(), []

    async def main():
        outcome, tasks = await watch_while_speaking(
            fake_server, speech, [sse.read(fake_server.url, "/v1/captions/room"),
                                  ws_viewer(fake_server.url, "/v1/captions/room", received)])
        for task in tasks:
            task.cancel()
        return outcome

    outcome = asyncio.run(main())
    assert sse.status == 200 and len(outcome.finals) >= 3
    assert [native(m) for m in sse.finals] == outcome.finals
    assert [native(m) for m in received if m["type"] == "final"] == outcome.finals
    ids = [event_id for event_id, m in sse.events if m["type"] == "final"]
    assert ids == [m["id"] for m in sse.finals] and len(set(ids)) == len(ids)
    assert received[0] == {"type": "feed", "topic": "room", "live": False}
    assert [m["state"] for m in received if m["type"] == "status"] == ["started", "ended"]


def test_a_viewer_that_reconnects_gets_every_final_it_missed(fake_server, speech):
    """A viewer that left after its first final and comes back with Last-Event-ID (or ?after=) gets the rest."""
    first, again, received = SseReader(), SseReader(), []

    async def main():
        outcome, _ = await watch_while_speaking(fake_server, speech, [first.read(fake_server.url, "/v1/captions/room",
                                                                                 finals=1)])
        last = first.finals[-1]["id"]
        task = asyncio.create_task(again.read(fake_server.url, "/v1/captions/room", {"Last-Event-ID": last}))
        ws_task = asyncio.create_task(ws_viewer(fake_server.url, f"/v1/captions/room?after={last}", received))
        await asyncio.sleep(1.0)
        task.cancel()
        ws_task.cancel()
        return outcome

    outcome = asyncio.run(main())
    assert [native(m) for m in first.finals + again.finals] == outcome.finals
    assert [native(m) for m in received if m["type"] == "final"] == outcome.finals[1:]


def test_a_late_joiner_gets_the_last_finals_and_a_gap_beyond_the_history(make_fake_server, speech):
    """Without an id a viewer gets the last feed_late_finals; past the kept history it is told of the gap."""
    server = make_fake_server(feed_late_finals=2, feed_history=3)
    late, behind = SseReader(), SseReader()

    async def main():
        outcome, _ = await watch_while_speaking(server, speech, [])
        task = asyncio.create_task(late.read(server.url, "/v1/captions/room"))
        ws = asyncio.create_task(behind.read(server.url, "/v1/captions/room?after=0-0"))
        await asyncio.sleep(0.5)
        task.cancel()
        ws.cancel()
        return outcome

    outcome = asyncio.run(main())
    assert len(outcome.finals) >= 4
    assert [native(m) for m in late.finals] == outcome.finals[-2:]
    kinds = [m["type"] for _, m in behind.events]
    assert kinds[:2] == ["feed", "gap"] and [native(m) for m in behind.finals] == outcome.finals[-3:]


def test_transcripts_of_the_finals_so_far(fake_server, speech):
    """txt, srt and vtt downloads hold the finals' text, with their times on the topic's timeline."""
    outcome, _ = asyncio.run(watch_while_speaking(fake_server, speech, []))
    texts = [f["text"] for f in outcome.finals if f["text"]]
    status, text = fetch(fake_server.http + "/v1/captions/room/transcript.txt")
    assert status == 200 and text.splitlines() == texts
    status, subrip = fetch(fake_server.http + "/v1/captions/room/transcript.srt")
    cues = list(srt.parse(subrip))
    assert [c.content for c in cues] == texts
    assert all(abs(c.start.total_seconds() - f["start"]) < 0.1 for c, f in zip(cues, outcome.finals))
    status, vtt = fetch(fake_server.http + "/v1/captions/room/transcript.vtt")
    assert status == 200 and vtt.startswith("WEBVTT") and all(t in vtt for t in texts)


@pytest.mark.slow
@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (tests/run.sh installs it with apt-get)")
def test_ffmpeg_reads_the_live_subtitles_into_the_finals(make_fake_server, speech, tmp_path):
    """ffmpeg reads the live playlist, while the session runs, into an SRT of the finals within 0.1 s of their times."""
    server = make_fake_server(hls_segment_s=1.0)
    out = tmp_path / "live.srt"

    async def main():
        speaking = asyncio.create_task(stream(server.url, *speech, pace=2.0, query="topic=hall"))
        playlist = server.http + "/v1/captions/hall/subtitles.m3u8"
        while "#EXTINF" not in fetch(playlist)[1]:  # the first segment is out: the session is live
            await asyncio.sleep(0.1)
        ffmpeg = await asyncio.create_subprocess_exec(FFMPEG, "-nostdin", "-loglevel", "error", "-live_start_index",
                                                      "0", "-i", playlist, str(out))
        outcome = await speaking
        assert await asyncio.wait_for(ffmpeg.wait(), 30) == 0  # the playlist ended with the session
        return outcome

    outcome = asyncio.run(main())
    finals = [f for f in outcome.finals if f["text"]]
    cues = list(srt.parse(out.read_text()))
    assert [c.content for c in cues] == [f["text"] for f in finals]
    for cue, final in zip(cues, finals):
        assert abs(cue.start.total_seconds() - final["start"]) <= 0.1
        assert abs(cue.end.total_seconds() - final["end"]) <= 0.1


def test_subtitles_playlist_carries_the_token_and_a_segment_is_webvtt(make_fake_server, speech, tmp_path):
    """Segment addresses carry the viewer's token (players drop the playlist's query) and the token is checked."""
    tokens = tmp_path / "viewers"
    tokens.write_text("watch-me room\n")
    server = make_fake_server(hls_segment_s=2.0, tokens=("speak",), viewer_tokens_file=str(tokens))
    asyncio.run(watch_while_speaking(server, speech, [], query="&token=speak"))
    status, playlist = fetch(server.http + "/v1/captions/room/subtitles.m3u8?token=watch-me")
    assert status == 200 and playlist.startswith("#EXTM3U") and "#EXT-X-ENDLIST" in playlist
    segment = next(line for line in playlist.splitlines() if line.endswith("?token=watch-me"))
    status, vtt = fetch(server.http + "/v1/captions/room/" + segment)
    assert status == 200 and vtt.startswith("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000")
    assert fetch(server.http + "/v1/captions/room/" + segment.split("?")[0])[0] == 401


def test_viewer_tokens_only_read_their_topics(make_fake_server, speech, tmp_path):
    """A viewer token reads its prefixes only, cannot send audio, upload a file or mint a speaker's secret."""
    (tmp_path / "speakers").write_text("speak room-\n")
    (tmp_path / "viewers").write_text("watch room-a\n")
    server = make_fake_server(tokens_file=str(tmp_path / "speakers"), viewer_tokens_file=str(tmp_path / "viewers"))
    feed = server.http + "/v1/captions/"
    assert fetch(feed + "room-a/transcript.txt?token=watch")[0] == 200
    assert fetch(feed + "room-a/transcript.txt", {"Authorization": "Bearer watch"})[0] == 200
    status, body = fetch(feed + "room-b/transcript.txt?token=watch")
    assert status == 403 and json.loads(body)["code"] == "forbidden_topic"
    assert fetch(feed + "room-a/transcript.txt")[0] == 401
    assert fetch(feed + "room-b/transcript.txt?token=speak")[0] == 200  # a speaker reads what it may publish
    assert fetch(feed + "other/transcript.txt?token=speak")[0] == 403

    async def speak_as_viewer():
        with pytest.raises(InvalidStatus) as refused:
            await stream(server.url, *speech, query="topic=room-a&token=watch")
        return refused.value.response

    refusal = asyncio.run(speak_as_viewer())
    assert refusal.status_code == 403 and json.loads(refusal.body)["code"] == "read_only"
    upload = urllib.request.Request(server.http + "/v1/audio/transcriptions", data=b"x", method="POST",
                                    headers={"Authorization": "Bearer watch", "Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=5)
    assert refused.value.code == 403
    assert fetch(server.http + "/v3/token?expires_in_seconds=60", {"Authorization": "watch"})[0] == 403


def test_a_read_secret_reads_one_topic_until_it_expires(make_fake_server, tmp_path):
    """A token mints a link's read-only secret for one topic (or a prefix); a secret mints nothing."""
    (tmp_path / "speakers").write_text("speak room-\n")
    server = make_fake_server(tokens_file=str(tmp_path / "speakers"))
    status, body = fetch(server.http + "/v1/captions/room-1/secret?expires_in_seconds=60&token=speak")
    minted = json.loads(body)
    assert status == 200 and minted["watch"] == f"/watch/room-1?token={minted['token']}"
    secret = minted["token"]
    assert fetch(server.http + f"/v1/captions/room-1/transcript.txt?token={secret}")[0] == 200
    assert fetch(server.http + f"/v1/captions/room-10/transcript.txt?token={secret}")[0] == 403
    assert fetch(server.http + f"/v1/captions/room-1/secret?token={secret}")[0] == 401
    assert fetch(server.http + "/v1/captions/other/secret?token=speak")[0] == 403
    status, body = fetch(server.http + "/v1/captions/room-/secret?scope=prefix&token=speak")
    prefix_secret = json.loads(body)["token"]
    assert fetch(server.http + f"/v1/captions/room-10/transcript.txt?token={prefix_secret}")[0] == 200

    async def speak_with_secret():
        with pytest.raises(InvalidStatus) as refused:
            await stream(server.url, b"\0\0" * 1600, 16000, query=f"topic=room-1&token={secret}")
        return refused.value.response.status_code

    assert asyncio.run(speak_with_secret()) == 403
    table = TokenTable({"speak": ("room-",)})
    expiring, _ = table.mint_reader(Grant("speak", ("room-",)), "room-1", True, 10, now=1000.0)
    assert table.reader(expiring, now=1009.0).can_read("room-1")
    with pytest.raises(Exception, match="expired"):
        table.reader(expiring, now=1010.0)


def test_viewers_over_the_limits_are_refused(make_fake_server):
    """Past max_viewers_per_topic (and max_viewers) a viewer gets 503 too_many_viewers; others carry on."""
    server = make_fake_server(max_viewers_per_topic=1, max_viewers=2)
    first, second = SseReader(), SseReader()

    async def main():
        tasks = [asyncio.create_task(first.read(server.url, "/v1/captions/a")),
                 asyncio.create_task(second.read(server.url, "/v1/captions/b"))]
        await asyncio.sleep(0.3)
        over_topic = fetch(server.http + "/v1/captions/a")
        over_server = fetch(server.http + "/v1/captions/c")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url + "/v1/captions/a"):
                pass
        for task in tasks:
            task.cancel()
        return over_topic, over_server, refused.value.response.status_code

    over_topic, over_server, ws_status = asyncio.run(main())
    assert over_topic[0] == over_server[0] == ws_status == 503
    assert json.loads(over_topic[1])["code"] == "too_many_viewers"


def test_a_viewer_that_sends_is_closed(fake_server):
    """A WebSocket viewer may send nothing: it gets a read_only error and close 1008."""

    async def main():
        async with connect(fake_server.url + "/v1/captions/room") as ws:
            assert json.loads(await ws.recv())["type"] == "feed"
            await ws.send(b"\0" * 3200)
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return error, ws.close_code

    error, code = asyncio.run(main())
    assert error["code"] == "read_only" and code == 1008


class Socketless:
    """A viewer whose socket takes nothing: what it was sent stays unsent (for the slow-viewer rule)."""

    def __init__(self, reads: bool) -> None:
        self.reads = reads
        self.sent: list[Item] = []
        self.dropped = False

    def send(self, item: Item) -> None:
        self.sent.append(item)

    @property
    def unsent_bytes(self) -> int:
        return 0 if self.reads else sum(len(item.sse) for item in self.sent)

    def drop(self) -> None:
        self.dropped = True

    def close(self) -> None: ...

    def keep_alive(self) -> None: ...


def test_a_slow_viewer_is_dropped_and_the_others_carry_on(speech):
    """A viewer past max_viewer_unsent_bytes is dropped (and counted); the others get every message."""
    from captioner.stream.events import Final

    async def main():
        metrics = Metrics()
        feeds = Feeds(load_settings({"max_viewer_unsent_bytes": 2048}, environ={}), metrics)
        slow, fast = Socketless(reads=False), Socketless(reads=True)
        feeds.started("s1", "room")
        feeds.join("room", slow, None)
        feeds.join("room", fast, None)
        for segment in range(20):
            feeds.event("s1", Final(segment, "word " * 40, segment, segment + 1.0), time.time())
        await asyncio.sleep(0.1)
        return metrics, feeds, slow, fast

    metrics, feeds, slow, fast = asyncio.run(main())
    assert slow.dropped and not fast.dropped and feeds.viewers == 1
    assert sum(1 for item in fast.sent if '"final"' in item.text) == 20
    assert metrics.viewer_drops.labels("slow_reader")._value.get() == 1


def test_youtube_gets_every_final_once_in_order_after_failing(make_fake_server, speech):
    """A YouTube ingestion receiver that fails at first gets every final of its topic once, in order, seq rising (a
    10 s outage of every kind: tests/test_youtube.py); nothing is posted for another topic or a client's address."""
    receiver, stray = Receiver(), Receiver()
    receiver.mode = "error"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    for endpoint in (receiver, stray):
        asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(5)
    server = make_fake_server(youtube_captions=(f"stage={receiver.url}",))

    async def main():
        outcome = await stream(server.url, *speech, pace=6.0, query="topic=stage")
        other = await stream(server.url, *speech, pace=0, query=f"topic={stray.url}&youtube={stray.url}")
        return outcome, other

    started = time.monotonic()
    outcome, _ = asyncio.run(main())
    time.sleep(max(0.0, 3 - (time.monotonic() - started)))
    receiver.mode = "ok"
    deadline = time.monotonic() + 40
    texts = [f["text"] for f in outcome.finals if f["text"]]
    while len(receiver.captions) < len(texts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [text for _, text in receiver.captions] == texts
    assert sorted(receiver.bodies) == list(range(1, len(receiver.bodies) + 1)) and not receiver.errors
    assert stray.captions == [] and stray.bodies == {}  # a client cannot make the server post anywhere
    loop.call_soon_threadsafe(loop.stop)


def test_viewers_are_counted_and_closed_after_the_last_finals_on_drain(speech):
    """Viewers per topic are in /metrics; a draining server sends viewers every final its streams finish with, then
    closes them."""
    from support import FAKE_MODEL, FakeEngine, RunningServer

    from captioner.server.app import App

    settings = load_settings({"port": 0}, environ={})
    server = RunningServer.start(App(settings, engine=FakeEngine(settings.stream), model_info=FAKE_MODEL))
    viewer = SseReader()

    async def main():
        reading = asyncio.create_task(viewer.read(server.url, "/v1/captions/room"))
        await asyncio.sleep(0.3)
        metrics = fetch(server.http + "/metrics")[1]
        speaking = asyncio.create_task(stream(server.url, *speech, pace=2.0, query="topic=room"))
        await asyncio.sleep(3.0)
        await asyncio.get_running_loop().run_in_executor(None, server.stop)
        outcome = await speaking
        await asyncio.wait_for(reading, 5)  # the server closed the feed
        return metrics, outcome

    metrics, outcome = asyncio.run(main())
    assert 'captioner_viewers{topic="room"} 1.0' in metrics
    assert outcome.close_code == 1001 and outcome.finals
    assert [native(m) for m in viewer.finals] == outcome.finals


def test_odd_resume_points_and_segment_numbers_are_not_errors(fake_server, speech):
    """Resume points that are not a feed's id (non-ASCII digits, 5,000 digits) replay what is kept after a gap;
    absurd segment numbers are 404, never a server error (found by bench/fuzz.py)."""
    outcome, _ = asyncio.run(watch_while_speaking(fake_server, speech, []))
    first = SseReader()
    asyncio.run(asyncio.wait_for(first.read(fake_server.url, "/v1/captions/room", finals=1), 5))
    key = first.finals[0]["id"].split("-")[0]
    for after in (f"{key}-%C2%B2", f"{key}-%E2%91%A0", f"{key}-" + "9" * 5000):
        received: list[dict] = []

        async def read(after=after, received=received):
            task = asyncio.create_task(ws_viewer(fake_server.url, f"/v1/captions/room?after={after}", received))
            await asyncio.sleep(0.5)
            task.cancel()

        asyncio.run(read())
        assert [m["type"] for m in received[:2]] == ["feed", "gap"]
        assert [native(m) for m in received if m["type"] == "final"] == outcome.finals
    viewer = SseReader()
    asyncio.run(asyncio.wait_for(viewer.read(fake_server.url, "/v1/captions/room", {"Last-Event-ID": f"{key}-²"},
                                             finals=len(outcome.finals)), 5))
    assert [native(m) for m in viewer.finals] == outcome.finals
    status, body = fetch(fake_server.http + "/v1/captions/room/subtitles/" + "9" * 5000 + ".vtt")
    assert status == 404 and json.loads(body)["code"] == "not_found"
