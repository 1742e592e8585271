"""What tests share: a fake engine (no model), real servers on loopback ports (in this process, or `captioner serve`
in a process of its own), free ports, readiness and resident memory."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from captioner.decoder.timing import WordTiming
from captioner.server.app import App, ModelInfo
from captioner.stream.config import StreamConfig
from captioner.stream.features import FRAMES_PER_SECOND
from captioner.stream.jobs import FinalJob, Hypothesis, Job

__all__ = ["N_MELS", "NO_CONTEXT", "FAKE_MODEL", "WordTokenizer", "FakeEngine", "RunningServer", "free_port", "get",
           "wait_ready", "spawn_serve", "start_serve", "resident_mb"]

N_MELS = 80
NO_CONTEXT = StreamConfig(context_s=0.0, update_context_s=0.0)
WORD_S = 0.5  # the fake's word k of a segment starts at k * WORD_S
OTHER_WORDS = 1_000_000  # token ids of words other than "w<t>" (keywords) start here
TIMEOUT_START_S = 60.0


class WordTokenizer:
    """An English-only tokenizer whose token t is the word " w<t>"; any other word is a token of its own."""

    language = "en"
    languages = ("en",)
    multilingual = False

    def decode(self, tokens: list[int]) -> str:
        return "".join(f" w{t}" for t in tokens)

    def encode(self, text: str) -> list[int]:
        return [int(word[1:]) if re.fullmatch(r"w\d+", word) else OTHER_WORDS + zlib.crc32(word.encode())
                for word in text.split()]

    def sot_sequence_for(self, language: str, task: str = "transcribe") -> tuple[int, ...]:
        """As an English-only checkpoint's: ValueError for another language or for translation."""
        if language != "en":
            raise ValueError(f"this checkpoint is English-only; language {language!r} is not available")
        if task != "transcribe":
            raise ValueError("this checkpoint is English-only; it cannot translate")
        return (0,)


class FakeEngine:
    """A deterministic stand-in for the model that agrees with itself, as a real one mostly does: word k of a
    segment is token k, WORD_S apart. It knows no context: its configuration decodes none (NO_CONTEXT).

    A JobRunner (captioner.stream.session) for sessions and the server's scheduler; each call of `run` takes
    `delay_s` (a slow model, for back-pressure and shedding)."""

    def __init__(self, config: StreamConfig = NO_CONTEXT, delay_s: float = 0.0) -> None:
        self.config = replace(config, context_s=0.0, update_context_s=0.0)
        self.delay_s = delay_s
        self.jobs: list[Job] = []
        self.final_beams: list[int | None] = []  # per call of run

    @property
    def tokenizer(self) -> WordTokenizer:
        return WordTokenizer()

    @property
    def n_mels(self) -> int:
        return N_MELS

    @property
    def on_gpu(self) -> bool:
        return False

    def run(self, jobs: list[Job], final_beam: int | None = None) -> list[Hypothesis]:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.jobs += jobs
        self.final_beams.append(final_beam)
        return [self._one(job) for job in jobs]

    def _one(self, job: Job) -> Hypothesis:
        assert job.context == 0 and job.context_positions == 0
        seconds = job.mel.shape[1] / FRAMES_PER_SECOND
        cut = isinstance(job, FinalJob) and job.max_new_tokens == 0  # the final is exactly the prefix
        tokens = job.prefix if cut else job.prefix + list(range(len(job.prefix), int(seconds / WORD_S)))
        words = [WordTiming(f" w{t}", [t], WORD_S * k, WORD_S * k + 0.4, 0.95) for k, t in enumerate(tokens)]
        return Hypothesis(tokens, words, [0.95] * len(tokens), finished=True)


FAKE_MODEL = ModelInfo("fake", "0" * 12, "cpu", "float32")  # what a server on a FakeEngine calls its model


class RunningServer:
    """A real captioner server on an ephemeral loopback port, its event loop on a thread of its own."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.app = app
        self.loop = loop
        self.thread = thread

    @classmethod
    def start(cls, app: App) -> RunningServer:
        """Start the app on a new event loop and thread; it is ready when this returns."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        server = cls(app, loop, thread)
        server.call(app.start())
        return server

    @property
    def url(self) -> str:
        scheme = "wss" if self.app.settings.certfile else "ws"
        return f"{scheme}://127.0.0.1:{self.app.port}"

    @property
    def http(self) -> str:
        scheme = "https" if self.app.settings.certfile else "http"
        return f"{scheme}://127.0.0.1:{self.app.port}"

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; (0, "") when nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_ready(url: str, process: subprocess.Popen, log: Path | None = None,
               timeout_s: float = TIMEOUT_START_S) -> None:
    """Wait until url answers 200; AssertionError (with the log's tail) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None else ""
            raise AssertionError(f"{process.args[0]} exited with {process.returncode}:\n{tail}")
        if get(url)[0] == 200:
            return
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log is not None else ""
    raise AssertionError(f"{url} not ready after {timeout_s} s:\n{tail}")


def spawn_serve(*options: str, port: int | None = None, log: Path | None = None,
                environ: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """`captioner serve` on a free port (or `port`), as in production: a process of its own, its stdout and stderr
    to `log` (or stderr piped, as text). It is not ready yet: see wait_ready."""
    port = port or free_port()
    command = [sys.executable, "-m", "captioner.tools.cli", "serve", "--port", str(port), *options]
    if log is None:
        return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environ), port
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ), port


def start_serve(*options: str, log: Path | None = None) -> tuple[subprocess.Popen, int]:
    """spawn_serve, then wait until its /readyz answers 200."""
    process, port = spawn_serve(*options, log=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", process, log)
    except BaseException:
        process.kill()
        raise
    return process, port


def resident_mb(port: int) -> float:
    """The resident memory of the server on port, from its /metrics, MiB."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(line for line in text.splitlines() if line.startswith("process_resident_memory_bytes"))
    return float(line.split()[-1]) / 2**20
