"""`captioner soak` against a real server on loopback, with real speech (short runs)."""

from __future__ import annotations

import json
import socket

from conftest import SAMPLES

from captioner.tools.cli import main


def test_soak_writes_a_report_with_percentiles_and_plots(server, tmp_path, capsys):
    report = tmp_path / "report"
    code = main(["soak", "--url", server.url, "--streams", "2", "--ramp", "1", "--duration", "16",
                 "--manifest", str(SAMPLES / "manifest.jsonl"), "--report", str(report)])
    assert code == 0
    assert f"report: {report / 'report.md'}" in capsys.readouterr().out
    data = json.loads((report / "report.json").read_text())
    (level,) = data["levels"]
    summary = level["summary"]
    assert summary["streams"] == 2 and summary["sessions"] == 2 and not summary["errors"]
    for kind in ("final", "partial"):
        for stat in ("p50", "p95", "p99", "max"):
            assert 0 < summary[f"{kind}_lag_{stat}"] < 10
    assert summary["first_partial_p50"] is not None and summary["wer"] is not None and summary["wer"] < 0.2
    assert summary["server_cpu_cores_mean"] > 0 and summary["server_rss_mb_max"] > 100  # scraped from /metrics
    # 16 s holds the first client's whole first clip (15 s), so WER has words to score
    assert [c["audio_s"] for c in level["clients"]] == [16.0, 16.0]  # bounded in time
    markdown = (report / "report.md").read_text()
    assert "final_lag_p99" in markdown and "![lag_vs_streams](lag_vs_streams.png)" in markdown
    for png in ("lag_over_time_2.png", "lag_vs_streams.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"


def test_soak_sweep_runs_each_level(server, tmp_path, capsys):
    report = tmp_path / "sweep"
    code = main(["soak", "--url", server.url, "--sweep", "1,2", "--ramp", "0", "--duration", "6", "--target", "30",
                 "--manifest", str(SAMPLES / "manifest.jsonl"), "--report", str(report)])
    assert code == 0
    assert "largest number of streams that holds the target: 2" in capsys.readouterr().out
    data = json.loads((report / "report.json").read_text())
    assert [level["summary"]["streams"] for level in data["levels"]] == [1, 2]
    assert "Largest number of streams that holds the target: 2" in (report / "report.md").read_text()
    assert (report / "lag_over_time_1.png").exists() and (report / "lag_vs_streams.png").exists()


def test_soak_says_when_no_server_listens(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["soak", "--url", f"ws://127.0.0.1:{port}", "--duration", "5",
                 "--manifest", str(SAMPLES / "manifest.jsonl"), "--report", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"captioner: error: cannot connect to ws://127.0.0.1:{port}")
