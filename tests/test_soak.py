"""`captioner soak` against a real server on loopback, with real speech (short runs)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from conftest import SAMPLES

from captioner.tools.cli import main
from captioner.tools.evaluate import Clip
from captioner.tools.replay import Replay
from captioner.tools.soak import Client, Level, Placed, Scrape, _score, write_report


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


def _level() -> Level:
    """Two clients' outcome, one of which ended with an error, and two scrapes of /metrics 2 s apart."""
    clients = [Client(0, 0.0, ["a"], finals=[(1.0, 0.8), (3.0, 1.2)], partials=[(0.5, 0.2)], first_partial_s=0.6,
                      errors=1, words=10),
               Client(1, 0.5, ["b"], finals=[(2.0, 0.9)], error="close 1011")]
    scrapes = [Scrape(0.0, 10.0, 2**30, 0, 0, {"overloaded": 1.0}),
               Scrape(2.0, 13.0, 2**31, 2, 0, {"overloaded": 3.0, "forbidden": 0.0})]
    return Level(2, 16.0, clients, scrapes, target_s=2.0)


def test_summary_has_typed_figures():
    """A level's Summary: lag percentiles, sessions behind or in error, rejections during it, server CPU and memory."""
    summary = _level().summarize()
    assert (summary.final_lag_p50, summary.final_lag_p95, summary.final_lag_max) == (0.9, 1.2, 1.2)
    assert summary.partial_lag_p95 == 0.2 and summary.first_partial_p50 == 0.6
    assert summary.sessions == 2 and summary.behind == 1 and summary.errors == {"close 1011": 1}
    assert summary.holds is False  # within the lag target, but a session ended with an error
    assert summary.rejections == {"overloaded": 2.0}
    assert summary.server_cpu_cores_mean == 1.5 and summary.server_rss_mb_max == 2048
    assert summary.wer == 0.1 and summary.words == 10


def test_a_refused_client_is_counted_but_neither_behind_nor_a_failure():
    """A 503 before the upgrade (at capacity) is the server keeping its admitted streams on time: the level holds."""
    level = _level()
    level.clients[1] = Client(1, 0.5, [], error="refused: HTTP 503")
    summary = level.summarize()
    assert summary.refused == 1 and summary.behind == 0 and summary.holds is True


def test_report_keeps_its_summary_names(tmp_path):
    """report.json's summary has the names it always had, and report.md a row per level."""
    write_report(tmp_path, [_level()], {"url": "ws://test", "date": "today"})
    (level,) = json.loads((tmp_path / "report.json").read_text())["levels"]
    assert list(level["summary"]) == [
        "streams", "duration_s", "target_s", "sessions", "behind", "errors", "rejections", "wer", "words",
        "first_partial_p50", "first_partial_p95", "first_partial_max", "server_cpu_cores_mean",
        "server_cpu_cores_max", "server_rss_mb_max", "partial_lag_p50", "partial_lag_p95", "partial_lag_p99",
        "partial_lag_max", "final_lag_p50", "final_lag_p95", "final_lag_p99", "final_lag_max", "holds",
        "greedy_finals", "refused", "lost_at_end"]
    assert level["summary"]["errors"] == {"close 1011": 1} and level["summary"]["holds"] is False
    markdown = (tmp_path / "report.md").read_text()
    assert "| 2 | 2 | 0 | 1 | 0.90 | 1.20 | 1.20 | 1.20 | 0.20 |" in markdown
    assert "- 2 streams: errors {'close 1011': 1}; server rejections {'overloaded': 2.0}" in markdown


def test_coinciding_clients_stream_the_same_clips_half_a_second_apart(fake_server, tmp_path):
    """--coincide: every client streams the same clips, each 0.5 s after the one before; greedy finals are counted."""
    report = tmp_path / "coincide"
    code = main(["soak", "--url", fake_server.url, "--streams", "3", "--coincide", "--duration", "6", "--target", "30",
                 "--manifest", str(SAMPLES / "manifest.jsonl"), "--report", str(report)])
    assert code == 0
    data = json.loads((report / "report.json").read_text())
    (level,) = data["levels"]
    clients = level["clients"]
    assert len({tuple(c["clips"]) for c in clients}) == 1 and data["meta"]["coincide"] is True
    starts = [c["start"] for c in clients]
    assert all(0.45 <= later - earlier <= 1.0 for earlier, later in zip(starts, starts[1:]))
    assert level["summary"]["greedy_finals"] == 0.0  # scraped from /metrics: a fake engine is never behind
    assert "clients 0.5 s apart" in (report / "report.md").read_text()



def test_words_lost_at_the_end_of_each_clip_are_counted():
    """Each final is scored against the clip its audio lies in: a clip whose last words never came counts them,
    even where the next clip's finals came in full."""
    one = Clip("one", Path("one.flac"), "the cat sat on the mat", 3.0, "test", "short")
    two = Clip("two", Path("two.flac"), "a dog ran in the park", 3.0, "test", "short")
    whole = [Placed(one, 0.0, 3.0), Placed(two, 4.0, 7.0)]
    finals = [{"type": "final", "text": "The cat sat", "start": 0.2, "end": 1.5},
              {"type": "final", "text": "a dog ran in the park.", "start": 4.1, "end": 6.8}]
    client = Client(0, 0.0, ["one", "two"])
    _score(client, Replay(messages=[(1.0 + f["end"], f) for f in finals], close_code=1000, sent_s=7.0), whole)
    assert (client.lost_at_end, client.errors, client.words) == (3, 3, 12)
