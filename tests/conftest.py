"""Shared fixtures: the real default model, servers on it or on a fake engine, sample speech, and the wider
evaluation set when present (the helpers behind them are in support.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import FAKE_MODEL, FakeEngine, RunningServer  # RunningServer: also for test modules that import it here

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SHARED_EVAL = ROOT.parent / "shared" / "eval"
# A test that needs one of these is in the slow tier, as are the modules marked slow as a whole (they start
# servers, browsers or other checkpoints themselves): the fast tier, `-m "not slow"`, is the pure core and
# the protocols and servers on a fake engine (make_fake_server), without the model, in about a minute.
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
    """tiny.en in float32 without int8 layers: the exact reference."""
    from captioner.model.loading import load_model

    return load_model(device="cpu", dtype=torch.float32, int8="off")


@pytest.fixture
def make_server(model):
    """Factory: start a server with the given settings (port 0, the shared model); stopped after the test."""
    from captioner.server.app import App
    from captioner.server.settings import load_settings

    servers: list[RunningServer] = []

    def start(**overrides) -> RunningServer:
        servers.append(RunningServer.start(App(load_settings({"port": 0, **overrides}, environ={}), model=model)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_fake_server():
    """Factory: start a server with the given settings (port 0) on a FakeEngine, no model; `delay_s`: each model
    pass takes this long; `protocols`: the stream endpoints by path. Stopped after the test."""
    from captioner.server.app import App
    from captioner.server.protocols import PROTOCOLS
    from captioner.server.settings import load_settings

    servers: list[RunningServer] = []

    def start(delay_s: float = 0.0, protocols=PROTOCOLS, **overrides) -> RunningServer:
        settings = load_settings({"port": 0, **overrides}, environ={})
        engine = FakeEngine(settings.stream, delay_s)
        servers.append(RunningServer.start(App(settings, engine=engine, model_info=FAKE_MODEL, protocols=protocols)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_server(make_fake_server):
    """A server with default settings on a FakeEngine."""
    return make_fake_server()


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

