"""What the benchmark scripts share: the clips, their audio, the model or server they measure, and how
results are kept (JSON beside the date, machine and command that made them) and shown (Markdown tables).

The scripts run as `python bench/NAME.py`, which puts bench/ first on sys.path, so they import this as
`harness`. They call captioner's code as any caller would, through its parameters and hooks; none patches
it (tests/test_bench.py checks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from captioner.model.int8 import INT8_MODES
from captioner.model.loading import DTYPES, load_model
from captioner.model.whisper import Model
from captioner.stream.audio import load_audio
from captioner.tools import soak
from captioner.tools.evaluate import Clip, read_manifest

__all__ = [
    "ROOT",
    "SHARED",
    "EVAL",
    "RESULTS",
    "MANIFESTS",
    "default_manifest",
    "read_clips",
    "read_audio",
    "add_model_arguments",
    "load",
    "serving",
    "server_cpu_s",
    "resident_mb",
    "metadata",
    "write_json",
    "table",
    "row",
]

ROOT = Path(__file__).resolve().parent.parent  # the repository
SHARED = ROOT.parent / "shared"  # data kept beside the checkout, not in it
EVAL = SHARED / "eval"  # 76 clips of real English speech
RESULTS = ROOT / "bench" / "results"  # ignored by git
MANIFESTS = (EVAL / "manifest.jsonl", ROOT / "samples" / "manifest.jsonl")  # the default: the first there is
TIMEOUT_READY_S = 120.0  # a server started here must answer /readyz within this


# -- clips ----------------------------------------------------------------------------------------


def default_manifest() -> Path:
    """../shared/eval's manifest, or samples/' in a plain clone, which has no ../shared."""
    return next((m for m in MANIFESTS if m.is_file()), MANIFESTS[-1])


def read_clips(manifest: Path | None = None, limit: int | None = None, kinds: Sequence[str] | None = None
               ) -> list[Clip]:
    """The manifest's clips (default_manifest()) of the given kinds (short, long, hard; None: all), the first
    `limit` of them."""
    clips = [c for c in read_manifest(manifest or default_manifest()) if kinds is None or c.kind in kinds]
    return clips[:limit]


def add_clip_arguments(parser: argparse.ArgumentParser, max_clip_s: float | None = None) -> None:
    """--max-clip-s and --every, read by `pick_clips`."""
    parser.add_argument("--max-clip-s", type=float, default=max_clip_s,
                        help="only the clips up to this long (short and long ones; default: %(default)s)")
    parser.add_argument("--every", type=int, default=1, help="...and of those every Nth (--max-clip-s 100 --every "
                        "4: 19 clips of ../shared/eval, 251 s, issue 44's one-stream set)")


def pick_clips(clips: list[Clip], args: argparse.Namespace) -> list[Clip]:
    """The clips add_clip_arguments' options pick."""
    if args.max_clip_s is not None:
        clips = [c for c in clips if c.kind != "hard" and c.duration <= args.max_clip_s] or clips
    return clips[:: args.every]


def read_audio(clips: Iterable[Clip]) -> dict[str, torch.Tensor]:
    """Each clip's audio by clip id: 16 kHz mono float samples, shape (n,)."""
    return {c.id: load_audio(c.audio) for c in clips}


# -- the model ------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, model: str | None = None, threads: int = 1) -> None:
    """--model, --device, --threads, --dtype and --int8, read by `load_args`."""
    parser.add_argument("--model", default=model, help=f"a named model or a checkpoint directory (default: "
                                                       f"{model or 'tiny.en'})")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch CPU threads (a server's inference worker uses one; default: %(default)s)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: the device's (model/loading.py)")
    parser.add_argument("--int8", default="auto", choices=INT8_MODES, help="int8 linear layers (model/int8.py)")


def load(model: str | None, device: str = "cpu", threads: int = 1, dtype: torch.dtype | None = None,
         int8: str = "auto") -> Model:
    """A named model or checkpoint (None: tiny.en) on a device, with torch on `threads` CPU threads (dtype: the
    device's default; int8: which parts run int8, model/int8.py)."""
    torch.set_num_threads(threads)
    return load_model(model, device=device, dtype=dtype, int8=int8)


def load_args(args: argparse.Namespace) -> Model:
    """The model that add_model_arguments' options ask for."""
    return load(args.model, args.device, args.threads, DTYPES[args.dtype] if args.dtype else None, args.int8)


# -- a server -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(options: Sequence[str] = (), url: str | None = None, log: Path | None = None,
            env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The base URL of the server to measure: `url` when given (a server run elsewhere), else that of
    `captioner serve OPTIONS` started here on a free loopback port, once ready, and stopped on leaving.
    log: where the started server's stderr goes (default: nowhere). env: its environment (default: ours).

    Raises SystemExit when the server is not ready within TIMEOUT_READY_S."""
    if url is not None:
        yield url
        return
    port = _free_port()
    with open(log, "w") if log else contextlib.nullcontext(subprocess.DEVNULL) as stderr:
        server = subprocess.Popen([sys.executable, "-m", "captioner.tools.cli", "serve", "--port", str(port),
                                   *options], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            _wait_ready(server, port)
            yield f"ws://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(60)


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + TIMEOUT_READY_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not become ready within {TIMEOUT_READY_S:g} s")


def server_cpu_s(url: str) -> float | None:
    """The server's process CPU seconds so far (user and system), from its /metrics; None if unreadable."""
    scraped = soak.scrape(soak.metrics_url(url), time.monotonic())
    return scraped.cpu_s if scraped is not None else None


def resident_mb(url: str) -> float:
    """The server's resident memory in MiB, from its /metrics. Raises OSError if unreadable."""
    scraped = soak.scrape(soak.metrics_url(url), time.monotonic())
    if scraped is None or scraped.rss_bytes is None:
        raise OSError(f"no resident memory in {soak.metrics_url(url)}")
    return round(scraped.rss_bytes / 2**20, 1)


# -- results --------------------------------------------------------------------------------------


def _processor() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def metadata(**fields: object) -> dict[str, object]:
    """What a result is kept with: when and where it was measured (date, machine, GPU, torch), the command
    that measured it, and the script's own fields."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{_processor()}, {os.cpu_count()} cores",
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "command": shlex.join(["python", *sys.argv]), **fields}


def write_json(path: Path, report: Mapping[str, object]) -> Path:
    """Write the report (its folder made if need be); numpy numbers are written as floats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float))
    return path


def row(cells: Iterable[object]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[str], rows: Iterable[Iterable[object]] = ()) -> str:
    """A Markdown table: the header, its rule, the rows."""
    return "\n".join([row(header), "|" + "---|" * len(header), *(row(r) for r in rows)])
