"""The viewer page (/watch/{topic}) in real headless Chromium: following a live topic from the server's feed or
from mosquitto's websockets listener, the overlay for video, and its keyboard controls."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from client import read_pcm16
from PIL import Image
from support import free_port
from test_mqtt import MOSQUITTO, Broker
from test_page import CHROMIUM, Page, start_chromium
from websockets.asyncio.client import connect

needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (tests/run.sh installs it with apt-get)")

MAX_LAG_S = 0.5  # a final on the page at most this long after the speaker's own client has it
TIMEOUT_S = 10.0
VIEWPORT = (640, 360)  # the overlay's screenshot, CSS pixels at a device scale of 1


class WebSocketBroker(Broker):
    """Debian's mosquitto with a websockets listener beside its plain one (2.0.11 refuses to start with only a
    websockets listener: "Unable to start any listening sockets"). Its libwebsockets binds an interface by name:
    `lo` keeps it on loopback, where "127.0.0.1" would bind every interface."""

    def __init__(self, tmp_path: Path, port: int, websocket_port: int) -> None:
        super().__init__(tmp_path, port)
        self.websocket_port = websocket_port
        self.config.write_text(self.config.read_text() + f"listener {websocket_port} lo\nprotocol websockets\n")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.websocket_port}"


@pytest.fixture
def broker(tmp_path):
    """A broker with a websockets listener, started; stopped after the test."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (tests/run.sh installs it with apt-get)")
    broker = WebSocketBroker(tmp_path, free_port(), free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One headless Chromium for the module: its DevTools port."""
    profile = tmp_path_factory.mktemp("chromium")
    process, port = start_chromium(profile / "profile", profile / "no-microphone.wav")  # no page opens one
    yield port
    process.kill()
    process.wait(10)


@asynccontextmanager
async def tab(port: int, url: str, width: int = 1024, height: int = 768):
    """A new tab at url, loaded; closed afterwards."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
    target = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(request).read()))
    try:
        async with connect(target["webSocketDebuggerUrl"], max_size=None) as websocket:
            page = Page(websocket)
            await page.call("Page.enable")
            await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                            mobile=False)
            await navigate(page, url)
            yield page
    finally:
        close = f"http://127.0.0.1:{port}/json/close/{target['id']}"
        await asyncio.to_thread(lambda: urllib.request.urlopen(close).read())


async def navigate(page: Page, url: str) -> None:
    await page.call("Page.navigate", url=url)
    await wait_for(page, f"location.href === {json.dumps(url)} && document.readyState === 'complete'")


async def wait_for(page: Page, expression: str, timeout_s: float = TIMEOUT_S):
    """The expression's value once it is truthy (polled); AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await page.evaluate(expression):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true after {timeout_s} s: {expression}")


async def shown(page: Page) -> list[str]:
    """The finals on the page, one string a line, labels included."""
    return await page.evaluate("[...document.querySelectorAll('#finals p:not(.gap)')].map(p => p.innerText.trim())")


def final(n: int, text: str, session: str = "s1", **fields) -> dict:
    return {"type": "final", "id": f"k-{n}", "session": session, "segment": n, "text": text, "start": 2.0 * n,
            "end": 2.0 * n + 1.5, "words": [], "language": "en", **fields}


def partial(n: int, text: str, stable: str, session: str = "s1") -> dict:
    return {"type": "partial", "session": session, "segment": n, "text": text, "stable": stable, "start": 2.0 * n,
            "end": 2.0 * n + 1.0, "words": [], "language": "en"}


async def inject(page: Page, *messages: dict) -> None:
    """Messages into the page as if its feed had sent them (handle: watch.js's one entry for every transport)."""
    for message in messages:
        await page.evaluate(f"handle({json.dumps(message)})")


# -- the server's feed ------------------------------------------------------------------------------------


async def speak(url: str, pcm: bytes, rate: int, topic: str, pace: float) -> list[tuple[float, dict]]:
    """Stream as the speaker at `pace` x real time; each message it gets, with the Unix time it got it."""
    received: list[tuple[float, dict]] = []
    async with connect(f"{url}/v1/stream?sample_rate={rate}&topic={topic}") as websocket:

        async def read() -> None:
            async for message in websocket:
                received.append((time.time(), json.loads(message)))

        reader = asyncio.create_task(read())
        step = rate // 10 * 2  # 100 ms of s16le
        for start in range(0, len(pcm), step):
            await websocket.send(pcm[start : start + step])
            await asyncio.sleep(0.1 / pace)
        await websocket.send(json.dumps({"type": "end"}))
        await reader
    return received


@pytest.mark.slow
@needs_chromium
def test_page_shows_each_final_within_half_a_second_of_the_speaker(make_fake_server, chromium, samples):
    """Each final of a live session is on the page at most 0.5 s after the speaker's own client has it."""
    server = make_fake_server()
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=24)  # a few segments

    async def scenario():
        async with tab(chromium, f"{server.http}/watch/hall") as page:
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            received = await speak(server.url, pcm, rate, "hall", pace=4.0)
            finals = [(at, m) for at, m in received if m["type"] == "final" and m["text"].strip()]
            await wait_for(page, f"window.__captions.length >= {len(finals)}")
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            return finals, await page.evaluate("window.__captions"), await shown(page)

    finals, captions, lines = asyncio.run(scenario())
    assert len(finals) >= 2
    assert [c["text"] for c in captions] == [m["text"] for _, m in finals]
    assert lines == [m["text"].strip() for _, m in finals]
    lags = [c["at"] / 1000 - at for c, (at, _) in zip(captions, finals)]
    assert max(lags) <= MAX_LAG_S, lags


@pytest.mark.slow
@needs_chromium
def test_page_resumes_after_its_connection_drops(make_fake_server, chromium, samples):
    """A viewer dropped mid-session (as one reading too slowly is) reconnects by itself, resumes after its last
    final (Last-Event-ID), and shows every final once, in order."""
    server = make_fake_server()
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=24)

    def drop_viewers() -> None:  # on the server's loop, as feeds.py drops a slow reader
        for viewer in list(server.app.feeds.feeds["hall"].viewers):
            viewer.drop()

    async def scenario():
        async with tab(chromium, f"{server.http}/watch/hall") as page:
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            speaking = asyncio.create_task(speak(server.url, pcm, rate, "hall", pace=4.0))
            await wait_for(page, "window.__captions.length >= 1")
            server.loop.call_soon_threadsafe(drop_viewers)
            await wait_for(page, "document.getElementById('status').textContent === 'reconnecting'")
            finals = [m for _, m in await speaking if m["type"] == "final" and m["text"].strip()]
            await wait_for(page, f"window.__captions.length >= {len(finals)}")
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            return finals, await shown(page), await page.evaluate("window.__captions.length")

    finals, lines, n_captions = asyncio.run(scenario())
    assert len(finals) >= 3
    assert lines == [m["text"].strip() for m in finals] and n_captions == len(finals)


@pytest.mark.slow
@needs_chromium
def test_page_reads_a_protected_feed_with_its_links_token(make_fake_server, chromium, samples, tmp_path):
    """The page passes its URL's token to the feed; without one it says it is not allowed."""
    (tmp_path / "speakers").write_text("speak room-\n")
    (tmp_path / "viewers").write_text("watch room-a\n")
    server = make_fake_server(tokens_file=str(tmp_path / "speakers"), viewer_tokens_file=str(tmp_path / "viewers"))
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    status = "document.getElementById('status').textContent"

    async def scenario():
        async with tab(chromium, f"{server.http}/watch/room-a") as refused:
            await wait_for(refused, f"{status}.startsWith('not allowed')")
            async with tab(chromium, f"{server.http}/watch/room-a?token=watch") as page:
                await wait_for(page, f"{status} === 'waiting for the speaker'")
                received = await speak(server.url, pcm, rate, "room-a&token=speak", pace=8.0)
                finals = [m["text"].strip() for _, m in received if m["type"] == "final" and m["text"].strip()]
                await wait_for(page, f"window.__captions.length >= {len(finals)}")
                return finals, await shown(page), await shown(refused)

    finals, lines, not_shown = asyncio.run(scenario())
    assert finals and lines == finals and not_shown == []


# -- the overlay ------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_chromium
def test_overlay_is_transparent_with_only_the_last_lines(fake_server, chromium):
    """?overlay=1: no controls, a transparent page, the newest lines at the bottom in opaque text."""
    width, height = VIEWPORT
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]

    async def scenario():
        async with tab(chromium, f"{fake_server.http}/watch/stage?overlay=1", width, height) as page:
            await page.call("Emulation.setDefaultBackgroundColorOverride", color={"r": 0, "g": 0, "b": 0, "a": 0})
            await inject(page, *[final(n, " ".join(words[n:] + words[:n])) for n in range(8)])
            await inject(page, partial(8, "and the last words", "and the"))
            await page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            layout = await page.evaluate(
                "(() => { const box = document.getElementById('captions').getBoundingClientRect();"
                " const first = document.querySelector('#finals p').getBoundingClientRect();"
                " return {top: box.top, bottom: box.bottom, first: first.bottom,"
                " line: parseFloat(getComputedStyle(document.getElementById('captions')).lineHeight),"
                " controls: getComputedStyle(document.getElementById('controls')).display}; })()")
            shot = await page.call("Page.captureScreenshot", format="png")
            return layout, np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))))

    layout, pixels = asyncio.run(scenario())
    assert pixels.shape == (height, width, 4)
    alpha = pixels[:, :, 3]
    assert layout["controls"] == "none"
    assert height - layout["bottom"] < layout["line"]  # at the bottom
    assert layout["bottom"] - layout["top"] <= 3.1 * layout["line"]  # three lines
    assert layout["first"] <= layout["top"]  # the oldest final is out of sight
    assert (alpha[: int(layout["top"]) - 4] == 0).all()  # above the captions (less the shadow): transparent
    text = alpha[int(layout["top"]) :]
    assert (text == 255).sum() > 500 and (text == 0).sum() > 0.3 * text.size  # opaque glyphs, clear between


# -- the broker's websockets listener -------------------------------------------------------------------


async def publish(broker: WebSocketBroker, topic: str, *messages: tuple[str, dict, int, bool]) -> None:
    """(leaf, message, qos, retain) to {prefix}/{topic}/{leaf}, over the broker's plain listener."""
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for leaf, message, qos, retain in messages:
            await client.publish(f"{topic}/{leaf}", json.dumps(message), qos=qos, retain=retain)


@pytest.mark.slow
@needs_chromium
def test_page_follows_the_broker_and_shows_each_final_once(fake_server, chromium, broker):
    """A late joiner gets the retained history, status and partial; finals sent twice (QoS 1, and in the
    history too) are shown once, in order; the partial goes when its final comes."""
    root = "cap/room-7"  # a prefix other than the default

    async def scenario():
        history = {"type": "history", "finals": [final(0, "first words"), final(1, "second words")]}
        await publish(broker, root, ("history", history, 1, True),
                      ("status", {"type": "status", "session": "s1", "state": "started"}, 1, True),
                      ("partial", partial(2, "third wor", "third"), 0, True))
        url = f"{fake_server.http}/watch/room-7?broker={broker.url}&prefix=cap"
        async with tab(chromium, url) as page:
            await wait_for(page, "document.getElementById('status').textContent === 'live'")
            await wait_for(page, "document.querySelectorAll('#finals p').length === 2")
            unstable = await wait_for(page, "document.querySelector('#partials .unstable')?.textContent")
            stable = await page.evaluate("document.querySelector('#partials .stable').textContent")
            await publish(broker, root, ("final", final(1, "second words"), 1, False),
                          ("final", final(2, "third words"), 1, False), ("final", final(2, "third words"), 1, False),
                          ("final", final(3, "fourth words"), 1, False))
            await wait_for(page, "document.querySelectorAll('#finals p').length >= 4")
            await publish(broker, root, ("status", {"type": "status", "session": "s1", "state": "ended"}, 1, True))
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            n_partials = await page.evaluate("document.getElementById('partials').childElementCount")
            return stable, unstable, await shown(page), n_partials

    stable, unstable, lines, n_partials = asyncio.run(scenario())
    assert (stable, unstable) == ("third", " wor")
    assert lines == ["first words", "second words", "third words", "fourth words"]
    assert n_partials == 0


@pytest.mark.slow
@needs_chromium
def test_page_reconnects_to_the_broker(fake_server, chromium, broker):
    """The broker restarts: the page says reconnecting, then gets the finals published after."""

    async def scenario():
        async with tab(chromium, f"{fake_server.http}/watch/room-8?broker={broker.url}") as page:
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            await publish(broker, "captioner/room-8", ("final", final(0, "before"), 1, False))
            await wait_for(page, "document.querySelectorAll('#finals p').length === 1")
            await asyncio.to_thread(broker.stop)
            await wait_for(page, "document.getElementById('status').textContent === 'reconnecting'")
            await asyncio.to_thread(broker.start)
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            await publish(broker, "captioner/room-8", ("final", final(1, "after"), 1, False))
            await wait_for(page, "document.querySelectorAll('#finals p').length === 2")
            return await shown(page)

    assert asyncio.run(scenario()) == ["before", "after"]


@pytest.mark.slow
@needs_chromium
def test_page_shows_a_servers_captions_through_the_broker(make_fake_server, chromium, broker, samples):
    """A server publishes a live session to the broker; the page, subscribed to the broker, shows its finals."""
    server = make_fake_server(mqtt_url=f"mqtt://127.0.0.1:{broker.port}")
    pcm, rate = read_pcm16(samples["two_cities"]["path"], seconds=16)

    async def scenario():
        async with tab(chromium, f"{server.http}/watch/hall?broker={broker.url}") as page:
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            received = await speak(server.url, pcm, rate, "hall", pace=4.0)
            finals = [m for _, m in received if m["type"] == "final" and m["text"].strip()]
            await wait_for(page, f"window.__captions.length >= {len(finals)}")
            await wait_for(page, "document.getElementById('status').textContent === 'waiting for the speaker'")
            return finals, await shown(page)

    finals, lines = asyncio.run(scenario())
    assert len(finals) >= 2 and lines == [m["text"].strip() for m in finals]


# -- controls ----------------------------------------------------------------------------------------------


async def press(page: Page, key: str, code: str, key_code: int, text: str = "") -> None:
    """A key pressed as the keyboard would: down (with the text it types, if any), then up."""
    await page.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=code, windowsVirtualKeyCode=key_code,
                    text=text or (key if len(key) == 1 else ""))
    await page.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=key_code)


SETTINGS = ("[getComputedStyle(document.documentElement).getPropertyValue('--scale').trim(),"
            " document.documentElement.dataset.theme]")


@pytest.mark.slow
@needs_chromium
def test_keys_change_size_and_theme_and_the_page_remembers(fake_server, chromium):
    """+, - and t change the font size and the theme; Tab reaches the buttons; a reload keeps the settings, and
    ?size= and ?theme= override them."""
    url = f"{fake_server.http}/watch/keys"

    async def scenario():
        async with tab(chromium, url) as page:
            await page.evaluate("localStorage.clear()")
            # nothing remembered: the theme follows the system's preference
            await page.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
            await navigate(page, url + "?again")
            steps = [await page.evaluate(SETTINGS)]
            for key, code, key_code in [("+", "Equal", 187), ("+", "Equal", 187), ("-", "Minus", 189),
                                        ("t", "KeyT", 84), ("t", "KeyT", 84)]:
                await press(page, key, code, key_code)
                steps.append(await page.evaluate(SETTINGS))
            await press(page, "Tab", "Tab", 9)
            focused = await page.evaluate("document.activeElement.id")
            await press(page, "Enter", "Enter", 13, "\r")  # a real button: Enter presses it
            steps.append(await page.evaluate(SETTINGS))
            await navigate(page, url)
            remembered = await page.evaluate(SETTINGS)
            await navigate(page, url + "?size=2&theme=light")
            overridden = await page.evaluate(SETTINGS)
            return steps, focused, remembered, overridden

    steps, focused, remembered, overridden = asyncio.run(scenario())
    assert steps == [["1", "dark"], ["1.2", "dark"], ["1.44", "dark"], ["1.2", "dark"], ["1.2", "light"],
                     ["1.2", "contrast"], ["1", "contrast"]]
    assert focused == "smaller"
    assert remembered == ["1", "contrast"]
    assert overridden == ["2", "light"]


@pytest.mark.slow
@needs_chromium
def test_speaker_labels_and_the_partials_unstable_tail(fake_server, chromium):
    """A speaker's label shows where the speaker changes (from the words' speakers too); the partial's unstable
    tail is dimmed; finals are in a polite live region."""

    def said(n: int, *runs: tuple[str, str]) -> dict:
        words = [{"word": word, "start": 0.0, "end": 0.0, "probability": 0.9, "speaker": speaker}
                 for speaker, text in runs for word in text.split()]
        return final(n, " ".join(text for _, text in runs), words=words, speaker=runs[0][0])

    async def scenario():
        async with tab(chromium, f"{fake_server.http}/watch/panel") as page:
            await inject(page, said(0, ("S1", "good morning")), said(1, ("S1", "welcome all")),
                         said(2, ("S2", "thank you"), ("S1", "please sit")), final(3, "no labels here"))
            await inject(page, {**partial(4, "and now the", "and now"), "speaker": "S2"})
            style = ("(selector) => { const s = getComputedStyle(document.querySelector(selector));"
                     " return [s.color, s.fontStyle]; }")
            return (await shown(page), await page.evaluate("document.querySelector('#partials p').innerText"),
                    await page.evaluate(f"({style})('#partials .stable')"),
                    await page.evaluate(f"({style})('#partials .unstable')"),
                    await page.evaluate("document.getElementById('finals').getAttribute('aria-live')"))

    lines, partial_line, stable, unstable, live = asyncio.run(scenario())
    assert lines == ["S1: good morning", "welcome all", "S2: thank you S1: please sit", "no labels here"]
    assert partial_line.split() == ["S2:", "and", "now", "the"]
    assert stable != unstable and unstable[1] == "italic"
    assert live == "polite"


@pytest.mark.slow
@needs_chromium
def test_download_links_carry_the_token(fake_server, chromium):
    """The transcript's txt, srt and vtt links point at the topic's transcript, with the page's token."""

    async def scenario():
        async with tab(chromium, f"{fake_server.http}/watch/room%209?token=ek_abc") as page:
            return await page.evaluate("[...document.querySelectorAll('#download a')].map(a => a.href)")

    base = f"{fake_server.http}/v1/captions/room%209/transcript"
    assert asyncio.run(scenario()) == [f"{base}.{kind}?token=ek_abc" for kind in ("txt", "srt", "vtt")]


def test_page_files_are_served_with_nothing_from_elsewhere(fake_server):
    """/watch/{topic} and its files, each with its content type, and no external resource."""
    for path, kind in [("/watch/any-topic", "text/html"), ("/watch.js", "text/javascript"),
                       ("/mqtt.js", "text/javascript"), ("/watch.css", "text/css")]:
        response = urllib.request.urlopen(fake_server.http + path)
        assert response.status == 200 and response.headers["Content-Type"].startswith(kind)
        body = response.read().decode()
        assert "http://" not in body and "https://" not in body  # no external resources
