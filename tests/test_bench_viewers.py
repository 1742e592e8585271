"""bench/viewers.py end to end, small: real-time speakers and their viewers (server-sent events, WebSocket, MQTT on
mosquitto's websockets listener), some of them reconnecting, on a server with a fake engine."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES
from support import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SCRIPT = ROOT / "bench" / "viewers.py"

pytestmark = pytest.mark.slow  # five phases of real-time streams


@pytest.fixture
def broker(tmp_path):
    """mosquitto with a plain listener (the server's) and a websockets listener (the viewers'): both URLs."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (tests/run.sh installs it with apt-get)")
    port, ws_port = free_port(), free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"allow_anonymous true\nuser root\nlistener {port} 127.0.0.1\n"
                      f"listener {ws_port} 127.0.0.1\nprotocol websockets\n")
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    for listening in (port, ws_port):
        while True:
            try:
                socket.create_connection(("127.0.0.1", listening), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
    yield f"mqtt://127.0.0.1:{port}", f"ws://127.0.0.1:{ws_port}/mqtt"
    process.terminate()
    process.wait(10)


def test_every_viewer_gets_its_speakers_finals_and_the_report_says_so(make_fake_server, broker, tmp_path):
    """Each phase's viewers, the reconnecting ones included, get exactly their speaker's finals; the report has the
    lags, resources and acceptance items, and the Markdown table is printed."""
    mqtt_url, ws_url = broker
    server = make_fake_server(mqtt_url=mqtt_url, max_pending_per_address=0)
    out = tmp_path / "viewers.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--url", server.url, "--broker", ws_url, "--duration", "10",
                          "--streams", "2", "--viewers", "6", "--reconnecting", "4", "--processes", "1",
                          "--warm-up", "0", "--manifest", str(SAMPLES / "manifest.jsonl"), "--out", str(out)],
                         check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert list(phases) == ["baseline", "server", "broker", "baseline-again"]
    assert phases["server"]["kinds"] == {"sse": 6, "ws": 6} and phases["broker"]["kinds"] == {"mqtt": 12}
    for name in ("server", "broker"):
        phase = phases[name]
        assert phase["connected"] == phase["viewers"] == 12
        assert phase["reconnecting"] == phase["reconnected"] == 4
        assert phase["equal"] == 12 and phase["reconnecting_equal"] == 4, phase["unequal_viewers"]
        assert phase["missing"] == phase["duplicated"] == phase["out_of_order"] == 0
        assert -100 <= phase["added_lag_ms"]["p50"] <= phase["added_lag_ms"]["p95"] < 1000  # two processes read
        assert phase["server"]["cpu_cores"] > 0 and phase["server"]["mb_per_1000"] is not None
    speakers = [s for p in phases.values() for s in p["speakers"]]
    assert all(s["finals"] and s["error"] is None for s in speakers) and any(s["finals"] > 1 for s in speakers)
    assert phases["server"]["resumed"] >= 1  # a reconnecting viewer presented the id of its last final
    held = {(h["phase"], h["item"]): h["holds"] for h in report["acceptance"]}
    assert len(held) == 6
    assert held["server", "every viewer's finals equal its speaker's"] is True
    assert held["broker", "every viewer's finals equal its speaker's"] is True
    assert "| phase | viewers |" in run.stdout
    assert "| server | 12 (6 SSE, 6 WS, 4 reconnecting) | 12/12 (4/4 reconnecting) |" in run.stdout
