"""The live-caption page in real headless Chromium, with real speech as its microphone."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile
from websockets.asyncio.client import connect

from captioner.tools.evaluate import word_errors

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CLIP = "LJ001-0001"


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, websocket) -> None:
        self.websocket = websocket
        self.ids = iter(range(1, 1_000_000))

    async def call(self, method: str, **params) -> dict:
        request_id = next(self.ids)
        await self.websocket.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.websocket.recv())
            if reply.get("id") == request_id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result["result"].get("value")


def start_chromium(profile: Path, fake_audio: Path) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={fake_audio}", "--autoplay-policy=no-user-gesture-required",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return process, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("Chromium did not start")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs it with apt-get)")
def test_page_shows_the_captions_of_the_microphone(server, samples, tmp_path):
    audio, rate = soundfile.read(str(samples[CLIP]["path"]), dtype="int16")
    wav = tmp_path / "speech.wav"
    soundfile.write(str(wav), audio, rate, subtype="PCM_16")
    duration = len(audio) / rate
    chromium, port = start_chromium(tmp_path / "profile", wav)
    try:
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        target = next(t for t in targets if t["type"] == "page")

        async def drive():
            async with connect(target["webSocketDebuggerUrl"], max_size=None) as websocket:
                page = Page(websocket)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=server.http + "/")
                for _ in range(100):
                    if await page.evaluate("document.readyState") == "complete":
                        break
                    await asyncio.sleep(0.1)
                await page.evaluate("document.getElementById('language').value = 'en';"
                                    "document.getElementById('keywords').value = 'Caxton, Gutenberg';"
                                    "document.getElementById('diarize').checked = true")
                await page.evaluate("document.getElementById('mic').click()")
                await asyncio.sleep(2.0)
                live = await page.evaluate("document.getElementById('state').textContent")
                await asyncio.sleep(duration - 1.0)  # the fake microphone plays the clip (then loops it)
                await page.evaluate("document.getElementById('stop').click()")
                for _ in range(300):
                    if await page.evaluate("document.getElementById('state').textContent") == "done":
                        break
                    await asyncio.sleep(0.1)
                state = await page.evaluate("document.getElementById('state').textContent")
                text = await page.evaluate("document.getElementById('finals').textContent")
                shot = await page.call("Page.captureScreenshot", format="png")
                return live, state, text, base64.b64decode(shot["data"])

        live, state, text, png = asyncio.run(drive())
    finally:
        chromium.kill()
        chromium.wait(10)
    (tmp_path / "page.png").write_bytes(png)  # the test's artefact
    # the language picker, the keywords box and the speakers box reached the server
    assert live == "live: tiny.en (en, 2 keywords, speakers)"
    assert state == "done"
    assert text.startswith("S1: ") and "S2" not in text  # one voice, labelled once
    assert word_errors(samples[CLIP]["text"], text.removeprefix("S1: ")).wer < 0.15, text


def test_page_and_its_scripts_are_served(fake_server):
    """The page and its scripts, each with its content type and nothing loaded from elsewhere."""
    server = fake_server
    for path, kind in [("/", "text/html"), ("/app.js", "text/javascript"), ("/worklet.js", "text/javascript")]:
        response = urllib.request.urlopen(server.http + path)
        assert response.status == 200 and response.headers["Content-Type"].startswith(kind)
        body = response.read().decode()
        assert "http://" not in body and "https://" not in body  # no external resources
