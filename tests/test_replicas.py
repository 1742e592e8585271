"""Two `captioner serve` processes behind Debian's nginx, run with deploy/nginx.conf on loopback ports."""

from __future__ import annotations

import asyncio
import difflib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from client import Outcome, SseReader, native, read_pcm16, stream
from support import free_port, get, spawn_serve, wait_ready

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PACE = 2.0  # x real time: a short test, yet streams stay open long enough to look at them
TIMEOUT_WAIT_S = 30.0
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

T = TypeVar("T")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class Replica:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str) -> float:
        """A sample of the replica's /metrics; 0 once it has exited."""
        status, body = get(f"http://{self.address}/metrics")
        if status != 200:
            return 0.0
        return float(re.search(rf"^{name} (\S+)$", body, re.MULTILINE).group(1))


def start_replica(tmp_path: Path, name: str) -> Replica:
    """`captioner serve` on one inference thread, its output in NAME.log; not ready yet (wait_ready)."""
    log = tmp_path / f"{name}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    process, port = spawn_serve("--threads", "1", "--log-format", "text", log=log, environ=environ)
    return Replica(port, process, log)


def render_nginx_conf(tmp_path: Path, listen_port: int, upstreams: list[str]) -> str:
    """deploy/nginx.conf with loopback upstreams and listener, and its logs and temp files under tmp_path."""
    conf = (DEPLOY / "nginx.conf").read_text()
    addresses = itertools.cycle(upstreams)  # each upstream block lists every replica
    conf, n_servers = re.subn(r"^(\s*server )[\w.-]+:\d+", lambda found: found.group(1) + next(addresses), conf,
                              flags=re.MULTILINE)
    conf, n_listen = re.subn(r"^(\s*listen )\d+;", rf"\g<1>127.0.0.1:{listen_port};", conf, flags=re.MULTILINE)
    conf, n_access = re.subn(r"access_log /dev/stdout ", f"access_log {tmp_path}/access.log ", conf)
    temp = "".join(f"\n    {kind}_temp_path {tmp_path}/{kind};" for kind in TEMP_PATHS)
    conf, n_http = re.subn(r"^http \{", "http {" + temp, conf, flags=re.MULTILINE)
    assert (n_servers % len(upstreams), n_listen, n_access, n_http) == (0, 1, 1, 1), "deploy/nginx.conf changed shape"
    return conf


def nginx_command(tmp_path: Path, conf: Path, *options: str) -> list[str]:
    """nginx in the foreground with conf; its pid file and error log under tmp_path."""
    return [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"),
            "-g", f"daemon off; pid {tmp_path}/nginx.pid;", *options]


def requires_nginx() -> None:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (tests/run.sh installs nginx-light with apt-get)")


@dataclass
class Cluster:
    replicas: list[Replica]
    port: int
    access_log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def access_entries(self, marker: str, count: int) -> list[tuple[list[str], list[str]]]:
        """(upstream addresses tried, their statuses) of the requests whose log line contains marker,
        once count of them are logged (nginx writes a line as it closes the connection)."""
        deadline = time.monotonic() + TIMEOUT_WAIT_S
        while True:
            lines = [line for line in self.access_log.read_text().splitlines() if marker in line]
            if len(lines) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        found = [re.search(r"upstream=(.*) upstream_status=(.*)$", line) for line in lines]
        return [(f.group(1).split(", "), f.group(2).split(", ")) for f in found]


@pytest.fixture
def cluster(tmp_path):
    """Replicas A and B (each on one inference thread) and nginx in front; all stopped after the test."""
    requires_nginx()
    replicas = [start_replica(tmp_path, name) for name in ("a", "b")]
    processes = [r.process for r in replicas]
    try:
        for replica in replicas:
            wait_ready(f"http://{replica.address}/readyz", replica.process, replica.log)
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(render_nginx_conf(tmp_path, port, [r.address for r in replicas]))
        nginx = subprocess.Popen(nginx_command(tmp_path, conf), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        processes.append(nginx)
        wait_ready(f"http://127.0.0.1:{port}/healthz", nginx, tmp_path / "error.log")
        yield Cluster(replicas, port, tmp_path / "access.log")
    finally:
        for process in processes:
            stop(process)


async def wait_for(condition: Callable[[], T], what: str) -> T:
    """Poll a blocking condition (it reads /metrics) off the loop until it returns something true."""
    deadline = time.monotonic() + TIMEOUT_WAIT_S
    while time.monotonic() < deadline:
        if result := await asyncio.to_thread(condition):
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def sessions_when(cluster: Cluster, total: int) -> list[int]:
    """Open sessions of each replica, once they add up to total."""
    def counts() -> list[int] | None:
        found = [int(r.metric("captioner_active_sessions")) for r in cluster.replicas]
        return found if sum(found) == total else None

    return await wait_for(counts, f"{total} open sessions")


def assert_complete(outcome: Outcome, expected: str) -> None:
    assert outcome.close_code == 1000, outcome.close_reason
    assert difflib.SequenceMatcher(None, words(outcome.text), words(expected)).ratio() > 0.8, outcome.text


def test_rendered_nginx_conf_passes_nginx_t(tmp_path):
    """deploy/nginx.conf with loopback upstreams is a valid configuration for Debian's nginx."""
    requires_nginx()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(tmp_path, free_port(), ["127.0.0.1:1", "127.0.0.1:2"]))
    command = nginx_command(tmp_path, conf, "-t")
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + (tmp_path / "error.log").read_text()


@pytest.mark.slow  # it loads the model or starts servers itself
def test_streams_spread_over_both_replicas(cluster, samples):
    """Four concurrent streams through nginx: two open on each replica at once, and each is transcribed."""
    sample = samples["LJ001-0001"]
    pcm, rate = read_pcm16(sample["path"])

    async def scenario():
        streams = [asyncio.create_task(stream(cluster.url, pcm, rate, pace=PACE)) for _ in range(4)]
        counts = await sessions_when(cluster, 4)
        return counts, await asyncio.gather(*streams)

    counts, outcomes = asyncio.run(scenario())
    assert counts == [2, 2]
    for outcome in outcomes:
        assert_complete(outcome, sample["text"])
    served = [addresses[-1] for addresses, _ in cluster.access_entries("/v1/stream", 4)]
    assert sorted(served) == sorted([r.address for r in cluster.replicas] * 2)


@pytest.mark.slow  # it loads the model or starts servers itself
def test_sigterm_drains_one_replica_while_the_other_takes_new_streams(cluster, samples):
    """SIGTERM on replica A: its stream gets finals for all the audio A received and closes 1001; a stream
    opened during the drain is refused by A and retried on B, the next one goes straight to B, and B's
    streams run to the end."""
    long_pcm, long_rate = read_pcm16(samples["two_cities"]["path"], seconds=20)
    sample = samples["LJ001-0001"]
    pcm, rate = read_pcm16(sample["path"])

    async def scenario():
        first = [asyncio.create_task(stream(cluster.url, long_pcm, long_rate, pace=PACE)) for _ in range(3)]
        counts = await sessions_when(cluster, 3)
        assert sorted(counts) == [1, 2]
        # A is the replica with one stream, so that least_conn picks it for the next stream while it drains
        a, b = cluster.replicas if counts[0] < counts[1] else reversed(cluster.replicas)
        await wait_for(lambda: a.metric("captioner_audio_seconds_total") >= 5, "5 s of audio on A")
        a.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        exited = asyncio.create_task(asyncio.to_thread(lambda: (a.process.wait(TIMEOUT_WAIT_S), time.monotonic())))
        await wait_for(lambda: get(f"http://{a.address}/readyz")[0] != 200, "A to drain")
        # the second stream opens while the first runs: well inside the fail_timeout that keeps A marked down
        opened = asyncio.Event()
        retried = asyncio.create_task(stream(cluster.url, pcm, rate, query="tag=retried", opened=opened))
        await opened.wait()
        later = [await stream(cluster.url, pcm, rate, query="tag=direct"), await retried]
        return a, b, await asyncio.gather(*first), later, signalled, await exited

    a, b, first, later, signalled, (code, exit_time) = asyncio.run(scenario())
    assert code == 0
    # A client still sending while its stream is finalised must not hold up the close (websockets' 10 s timeout)
    assert exit_time - signalled < 8
    (drained,) = [o for o in first if o.close_code == 1001]
    completed = [o for o in first if o.close_code == 1000]
    assert len(completed) == 2, [(o.close_code, o.close_reason) for o in first]
    (done,) = drained.of_type("done")
    assert drained.finals[-1]["end"] > done["audio_s"] - 1.0  # no final lost at the drain
    said, reference = words(drained.text), words(completed[0].text)
    assert len(said) >= 8
    assert difflib.SequenceMatcher(None, said, reference[: len(said)]).ratio() > 0.8, drained.text
    for outcome in completed:
        (done,) = outcome.of_type("done")
        assert done["audio_s"] == pytest.approx(20, abs=0.1)
    for outcome in later:
        assert_complete(outcome, sample["text"])
    (retried,), (direct,) = cluster.access_entries("tag=retried", 1), cluster.access_entries("tag=direct", 1)
    # 503 while A drains; 502 if A has already exited (connection refused). Either marks A down (max_fails=1).
    assert retried[0] == [a.address, b.address] and retried[1][0] in ("502", "503") and retried[1][1] == "101"
    assert direct == ([b.address], ["101"])


@pytest.mark.slow  # it starts servers itself
def test_a_topics_viewers_meet_its_speaker_on_one_replica(cluster, samples):
    """Through nginx, a topic's viewers (server-sent events) reach the replica its speaker streams to, whatever the
    load, and get every final of it; two topics at once."""
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"])
    topics = ("hall-1", "hall-2")
    viewers = {topic: SseReader() for topic in topics}

    async def scenario():
        reading = [asyncio.create_task(viewers[t].read(cluster.url, f"/v1/captions/{t}")) for t in topics]
        await asyncio.sleep(0.5)
        outcomes = await asyncio.gather(*(stream(cluster.url, pcm, rate, pace=PACE, query=f"topic={t}")
                                          for t in topics))
        await asyncio.sleep(1.0)
        for task in reading:
            task.cancel()
        return outcomes

    outcomes = asyncio.run(scenario())
    for topic, outcome in zip(topics, outcomes):
        assert outcome.finals and [native(m) for m in viewers[topic].finals] == outcome.finals
