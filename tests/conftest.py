"""Shared fixtures: the real default model, sample speech, and the wider evaluation set when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SHARED_EVAL = ROOT.parent / "shared" / "eval"
# A test that needs one of these is in the slow tier, as are the modules marked slow as a whole (they start
# servers, browsers or other checkpoints themselves): the fast tier, `-m "not slow"`, is the pure core and
# the protocols, without the model, in about a minute.
SLOW_FIXTURES = {"model", "model_f32", "make_server", "server", "shared_eval"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def sample_manifest() -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def samples() -> dict[str, dict]:
    """Sample clips by file stem, with absolute audio paths."""
    return {Path(e["audio"]).stem: {**e, "path": SAMPLES / e["audio"]} for e in sample_manifest()}


@pytest.fixture(scope="session")
def shared_eval() -> Path:
    """../shared/eval (76 clips); tests that need it skip in a plain clone, which does not have it."""
    if not (SHARED_EVAL / "manifest.jsonl").is_file():
        pytest.skip("../shared/eval is not present (a plain clone has only samples/)")
    return SHARED_EVAL


@pytest.fixture(scope="session")
def model():
    """The default tiny.en at the default CPU dtype."""
    from captioner.model.loading import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def model_f32():
    from captioner.model.loading import load_model

    return load_model(device="cpu", dtype=torch.float32)


class RunningServer:
    """A real captioner server on an ephemeral loopback port, its event loop on a thread of its own."""

    def __init__(self, app, loop, thread) -> None:
        self.app = app
        self.loop = loop
        self.thread = thread

    @property
    def url(self) -> str:
        scheme = "wss" if self.app.settings.certfile else "ws"
        return f"{scheme}://127.0.0.1:{self.app.port}"

    @property
    def http(self) -> str:
        scheme = "https" if self.app.settings.certfile else "http"
        return f"{scheme}://127.0.0.1:{self.app.port}"

    def call(self, coroutine, timeout: float = 60):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def make_server(model):
    """Factory: start a server with the given settings (port 0, the shared model); stopped after the test."""
    import asyncio
    import threading

    from captioner.server.app import App
    from captioner.server.settings import load_settings

    servers = []

    def start(**overrides) -> RunningServer:
        settings = load_settings({"port": 0, **overrides}, environ={})
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        app = App(settings, model=model)
        asyncio.run_coroutine_threadsafe(app.start(), loop).result(60)
        server = RunningServer(app, loop, thread)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server):
    """A server with default settings."""
    return make_server()


@pytest.fixture(scope="session")
def two_voices(samples) -> tuple[bytes, list[tuple[str, float, float]]]:
    """A conversation of two sample voices as 16 kHz s16le: a LibriSpeech reader, the LJ Speech reader, the first
    again, 0.6 s apart; and its turns (reader, start s, end s)."""
    import numpy as np

    from captioner.stream.audio import SAMPLE_RATE, load_audio

    pieces, turns, t = [], [], 0.0
    for name, who in (("1688-142285-0000", "ls"), ("LJ001-0001", "lj"), ("1688-142285-0001", "ls")):
        audio = load_audio(samples[name]["path"]).numpy()
        pieces += [audio, np.zeros(int(0.6 * SAMPLE_RATE), np.float32)]
        turns.append((who, t, t + len(audio) / SAMPLE_RATE))
        t += len(audio) / SAMPLE_RATE + 0.6
    pcm = (np.concatenate(pieces).clip(-1, 1) * 32767).astype(np.int16).tobytes()
    return pcm, turns

