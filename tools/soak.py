"""Latency soak: N real-time clients on a running server, ramped up, each streaming real speech for a set time.

Each client holds one session and streams the clips of a manifest back to back (1 s of silence
between them, a different starting clip per client) at real-time pace. Lag is the receive time of
a caption minus the wall time at which the audio of its end was sent. The server's /metrics is
scraped during the run (its CPU, memory, sessions, queue depth and rejections).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from captioner.model.errors import UsageError
from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.tools.evaluate import Clip, WordErrors, lost_at_end, percentile, read_manifest, word_errors
from captioner.tools.replay import Replay, ReplayError, replay

__all__ = ["Client", "Level", "Scrape", "Summary", "largest_holding", "soak", "write_report", "run_soak"]

GAP_S = 1.0
COINCIDE_GAP_S = 0.5  # --coincide: clients start this far apart, all with the same clips
BEHIND_S = 2.0  # a stream whose final lag grows by more than this over its run has fallen behind


@dataclass
class Client:
    """One client's session: what it streamed and what came back, times in seconds since the soak began."""

    index: int
    start: float  # when its first audio went out
    clips: list[str]  # ids of the whole clips it streamed (the ones scored)
    finals: list[tuple[float, float]] = field(default_factory=list)  # (receive time, lag)
    partials: list[tuple[float, float]] = field(default_factory=list)
    first_partial_s: float | None = None  # after the onset of its first word
    audio_s: float = 0.0  # audio sent
    wer: float | None = None
    errors: int = 0  # word errors
    words: int = 0  # reference words scored
    lost_at_end: int = 0  # reference words missing after the last one its finals gave, summed over its whole clips
    error: str | None = None  # why the session ended badly: "refused: HTTP 503", "overloaded", "close 1011", ...

    @property
    def refused(self) -> bool:
        """The server refused it before the upgrade with a 503 (at capacity, full): documented, not a failure."""
        return self.error == "refused: HTTP 503"

    @property
    def behind(self) -> bool:
        if self.refused:
            return False
        return self.error is not None or (len(self.finals) > 1 and self.finals[-1][1] - self.finals[0][1] > BEHIND_S)


@dataclass(frozen=True)
class Scrape:
    """The server's /metrics at one moment; None where it had no such metric."""

    t: float  # seconds since the soak began
    cpu_s: float | None  # process CPU seconds so far, user and system
    rss_bytes: float | None  # resident memory
    sessions: float | None  # streams open
    queue: float | None  # jobs waiting for the model
    rejections: dict[str, float]  # streams refused so far, by reason
    greedy_finals: float | None = None  # finals decoded greedily so far, because the server was behind


@dataclass(frozen=True)
class Summary:
    """What one soak level came to: report.json's `summary` and a row of report.md. Times in seconds; the
    percentiles and maxima are None where there was nothing to measure."""

    streams: int  # clients asked for
    duration_s: float  # audio each client streams
    target_s: float  # the final lag p95 the level must stay within
    sessions: int  # clients that started
    behind: int  # sessions that fell behind (final lag grew by more than BEHIND_S) or ended with an error
    errors: dict[str, int]  # sessions that ended badly, by why (Client.error)
    rejections: dict[str, float]  # streams the server refused during the level, by reason
    wer: float | None  # over the whole clips streamed (None: no words scored)
    words: int  # reference words scored
    first_partial_p50: float | None  # from the onset of a session's first word to its first caption
    first_partial_p95: float | None
    first_partial_max: float | None
    server_cpu_cores_mean: float | None  # cores busy between scrapes of /metrics
    server_cpu_cores_max: float | None
    server_rss_mb_max: float | None  # the server's largest resident memory, MiB
    partial_lag_p50: float | None  # lag: receive time minus the wall time the audio of the caption's end was sent
    partial_lag_p95: float | None
    partial_lag_p99: float | None
    partial_lag_max: float | None
    final_lag_p50: float | None
    final_lag_p95: float | None
    final_lag_p99: float | None
    final_lag_max: float | None
    holds: bool  # final lag p95 within target_s, no session behind, no errors but refusals
    greedy_finals: float | None = None  # finals the server decoded greedily during the level (it was behind)
    refused: int = 0  # clients refused with a 503 before the upgrade (at_capacity, overloaded): the admitted hold
    lost_at_end: int = 0  # reference words missing at the ends of whole clips (tools/evaluate.py lost_at_end)


@dataclass
class Level:
    """The outcome of one soak at N streams (filled in while it runs)."""

    streams: int
    duration_s: float
    clients: list[Client]
    scrapes: list[Scrape]
    target_s: float

    def lags(self, kind: str) -> list[float]:
        return [lag for c in self.clients for _, lag in (c.finals if kind == "final" else c.partials)]

    def summarize(self) -> Summary:
        words = WordErrors(sum(c.errors for c in self.clients), sum(c.words for c in self.clients))
        first = [c.first_partial_s for c in self.clients if c.first_partial_s is not None]
        cpu = [cores for _, cores in _cpu_cores(self.scrapes)]
        behind = sum(c.behind for c in self.clients)
        errors = dict(Counter(c.error for c in self.clients if c.error))
        partial, final = self.lags("partial"), self.lags("final")
        final_p95 = percentile(final, 95)
        return Summary(
            streams=self.streams, duration_s=self.duration_s, target_s=self.target_s, sessions=len(self.clients),
            behind=behind, errors=errors, rejections=_rejections(self.scrapes),
            wer=words.wer if words.words else None, words=words.words,
            first_partial_p50=percentile(first, 50), first_partial_p95=percentile(first, 95),
            first_partial_max=max(first, default=None),
            server_cpu_cores_mean=float(np.mean(cpu)) if cpu else None, server_cpu_cores_max=max(cpu, default=None),
            server_rss_mb_max=max((s.rss_bytes / 2**20 for s in self.scrapes if s.rss_bytes), default=None),
            partial_lag_p50=percentile(partial, 50), partial_lag_p95=percentile(partial, 95),
            partial_lag_p99=percentile(partial, 99), partial_lag_max=max(partial, default=None),
            final_lag_p50=percentile(final, 50), final_lag_p95=final_p95, final_lag_p99=percentile(final, 99),
            final_lag_max=max(final, default=None),
            holds=final_p95 is not None and final_p95 <= self.target_s and not behind and not (
                set(errors) - {"refused: HTTP 503"}),
            greedy_finals=_increase([s.greedy_finals for s in self.scrapes]),
            refused=sum(c.refused for c in self.clients),
            lost_at_end=sum(c.lost_at_end for c in self.clients),
        )


def _increase(values: list[float | None]) -> float | None:
    """How much a counter grew between the first and the last scrape that had it."""
    known = [v for v in values if v is not None]
    return known[-1] - known[0] if known else None


def _rejections(scrapes: list[Scrape]) -> dict[str, float]:
    """Streams the server refused between the first scrape and the last, by reason (those it refused)."""
    if not scrapes:
        return {}
    first, last = scrapes[0].rejections, scrapes[-1].rejections
    return {reason: value - first.get(reason, 0.0) for reason, value in last.items()
            if value - first.get(reason, 0.0)}


def _cpu_cores(scrapes: list[Scrape]) -> list[tuple[float, float]]:
    """Server CPU use (cores busy) between consecutive scrapes."""
    points = [s for s in scrapes if s.cpu_s is not None]
    return [(b.t, (b.cpu_s - a.cpu_s) / (b.t - a.t)) for a, b in itertools.pairwise(points) if b.t > a.t]


def metrics_url(url: str) -> str:
    """http(s)://host:port/metrics of a ws(s):// server URL."""
    scheme, rest = url.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.split('/', 1)[0]}/metrics"


def scrape(url: str, t: float) -> Scrape | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    values: dict[str, float] = {}
    rejections: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "captioner_rejections_total":
                rejections[sample.labels.get("reason", "")] = sample.value
            elif not sample.labels:
                values[sample.name] = sample.value
    return Scrape(t, values.get("process_cpu_seconds_total"), values.get("process_resident_memory_bytes"),
                  values.get("captioner_active_sessions"), values.get("captioner_scheduler_queue_depth"), rejections,
                  values.get("captioner_greedy_finals_total"))


@dataclass(frozen=True)
class Placed:
    """A whole clip in a client's programme: from start_s to end_s of its audio."""

    clip: Clip
    start_s: float
    end_s: float


def programme(clips: list[Clip], audios: dict[str, np.ndarray], first: int, duration: float
              ) -> tuple[np.ndarray, list[Placed]]:
    """`duration` seconds of clips from `first` on, cycling, joined by silence; and the whole clips in it (the
    tail of a clip cut off at `duration` is not scored)."""
    pieces, whole, length = [], [], 0.0
    gap = np.zeros(int(SAMPLE_RATE * GAP_S), dtype=np.float32)
    while length < duration:
        clip = clips[(first + len(pieces) // 2) % len(clips)]
        pieces += [audios[clip.id], gap]
        start, length = length, length + len(audios[clip.id]) / SAMPLE_RATE
        if length <= duration:
            whole.append(Placed(clip, start, length))
        length += GAP_S
    return np.concatenate(pieces)[: int(SAMPLE_RATE * duration)], whole


async def soak(url: str, clips: list[Clip], streams: int, duration: float, *, ramp: float = 10.0,
               target_s: float = 2.0, token: str | None = None, cafile: str | None = None, chunk_ms: int = 100,
               scrape_every: float = 2.0, on_tick: Callable[[float, Level], None] | None = None,
               metrics: str | None = None, coincide: bool = False, partials: bool = True) -> Level:
    """Run `streams` real-time clients for about `duration` s of audio each, started evenly over `ramp` s, each
    from its own place in the clips; with coincide, every client streams the same clips, COINCIDE_GAP_S after the
    one before, so that their speech and their pauses line up (a panel, a classroom: the hard case).

    metrics: the server's /metrics URL (default: on the stream URL's host and port). partials=False: every client
    asks for finals only (`partials=false`)."""
    audios = {c.id: load_audio(c.audio).numpy() for c in clips}
    began = time.monotonic()
    level = Level(streams, duration, [], [], target_s)
    metrics = metrics or metrics_url(url)

    async def client(k: int) -> None:
        await asyncio.sleep(COINCIDE_GAP_S * k if coincide else ramp * k / streams)
        audio, whole = programme(clips, audios, 0 if coincide else k * 7, duration)
        c = Client(k, time.monotonic() - began, [placed.clip.id for placed in whole])
        level.clients.append(c)

        def on_message(t: float, message: dict) -> None:
            kind = message.get("type")
            if kind in ("partial", "final") and message.get("text"):
                (c.finals if kind == "final" else c.partials).append((c.start + t, t - message["end"]))

        try:
            result = await replay(url, audio, token=token, cafile=cafile, chunk_ms=chunk_ms, on_message=on_message,
                                  query=None if partials else {"partials": "false"})
        except ReplayError as e:
            c.error = f"refused: HTTP {e.status}" if e.status else "unreachable"
            return
        _score(c, result, whole)

    async def watch() -> None:
        while True:
            sample = await asyncio.to_thread(scrape, metrics, time.monotonic() - began)
            if sample is not None:
                level.scrapes.append(sample)
            if on_tick is not None:
                on_tick(time.monotonic() - began, level)
            await asyncio.sleep(scrape_every)

    watcher = asyncio.create_task(watch())
    longest = max(len(a) for a in audios.values()) / SAMPLE_RATE
    starts = COINCIDE_GAP_S * streams if coincide else ramp
    try:
        await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(streams))),
                               starts + duration + longest + 60)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    final_scrape = scrape(metrics, time.monotonic() - began)
    if final_scrape is not None:
        level.scrapes.append(final_scrape)
    level.clients.sort(key=lambda c: c.index)
    return level


def _score(c: Client, result: Replay, whole: list[Placed]) -> None:
    c.audio_s = result.sent_s
    if result.error:
        c.error = result.error.get("code", "error")
    elif result.close_code != 1000:
        c.error = f"close {result.close_code}"
    finals = [m for m in result.finals if m["text"]]
    if finals and finals[0].get("words"):
        onset = finals[0]["words"][0]["start"]
        partials = [t for t, m in result.messages if m.get("type") == "partial" and m.get("text")]
        first = min(partials + [t for t, m in result.messages if m.get("type") == "final" and m.get("text")])
        c.first_partial_s = first - onset
    if not c.error and whole:  # a stream cut short by an error has no whole reference to score against
        hypothesis = " ".join(m["text"] for m in finals if m["start"] < whole[-1].end_s + GAP_S / 2)
        errors = word_errors(" ".join(placed.clip.text for placed in whole), hypothesis)
        c.wer, c.errors, c.words = errors.wer, errors.errors, errors.words
        c.lost_at_end = sum(lost_at_end(placed.clip.text, _text_within(finals, placed)) for placed in whole)


def _text_within(finals: list[dict], placed: Placed) -> str:
    """The text of the finals centred within a clip's audio (or the silence halfway to the next)."""
    return " ".join(m["text"] for m in finals
                    if placed.start_s - GAP_S / 2 <= (m["start"] + m["end"]) / 2 < placed.end_s + GAP_S / 2)


def largest_holding(levels: list[Level]) -> int | None:
    held = [level.streams for level in levels if level.summarize().holds]
    return max(held) if held else None


def write_report(directory: Path, levels: list[Level], meta: dict) -> Path:
    """report.json, report.md and PNG plots in `directory`; returns the Markdown file."""
    directory.mkdir(parents=True, exist_ok=True)
    summaries = [level.summarize() for level in levels]
    (directory / "report.json").write_text(json.dumps(
        {"meta": meta, "levels": [{"summary": asdict(s),
                                   "clients": [asdict(c) | {"behind": c.behind} for c in level.clients],
                                   "scrapes": [asdict(x) for x in level.scrapes]}
                                  for s, level in zip(summaries, levels)]}, indent=1))
    plots = _plots(directory, levels)
    lines = [f"# captioner soak: {meta.get('url', '')}", "",
             (f"{meta.get('date', '')}; {meta.get('clips', 0)} clips of {meta.get('manifest', '')}; "
              f"lag target (final p95) {levels[0].target_s:g} s; "
              + (f"coinciding: the same clips, clients {COINCIDE_GAP_S:g} s apart." if meta.get("coincide")
                 else f"ramp {meta.get('ramp_s', 0):g} s.")), ""]
    if len(levels) > 1:
        best = largest_holding(levels)
        lines += [f"**Largest number of streams that holds the target: {best if best else 'none'}.**", ""]
    def fmt(key: str, value: object) -> str:
        if value is None:
            return "-"
        if key == "wer":
            return f"{100 * value:.1f} %"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    columns = ["streams", "sessions", "refused", "behind", "final_lag_p50", "final_lag_p95", "final_lag_p99",
               "final_lag_max", "partial_lag_p50", "partial_lag_p95", "partial_lag_p99", "partial_lag_max",
               "first_partial_p50", "first_partial_p95", "wer", "lost_at_end", "greedy_finals",
               "server_cpu_cores_mean", "server_rss_mb_max", "holds"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(k, getattr(s, k)) for k in columns) + " |" for s in summaries]
    lines += ["", ("Lags and times in seconds; WER over the whole clips streamed (normalised as Whisper's "
                   "English); lost_at_end: reference words missing after the last word the finals gave of each "
                   "whole clip; server CPU in cores busy, from its /metrics."), "", "## Errors and rejections", ""]
    for s in summaries:
        lines.append(f"- {s.streams} streams: errors {s.errors or 'none'}; server rejections {s.rejections or 'none'}")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plots(directory: Path, levels: list[Level]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for level in levels:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[2, 1])
        for kind, colour, size in (("partial", "tab:blue", 3), ("final", "tab:red", 9)):
            points = [p for c in level.clients for p in (c.finals if kind == "final" else c.partials)]
            if points:
                top.scatter(*zip(*points), s=size, c=colour, alpha=0.5, label=f"{kind} lag")
        top.axhline(level.target_s, color="grey", linestyle="--", linewidth=1, label="target")
        top.set_ylabel("lag (s)")
        top.legend(loc="upper left")
        top.set_title(f"{level.streams} real-time streams")
        cpu = _cpu_cores(level.scrapes)
        if cpu:
            bottom.plot(*zip(*cpu), color="tab:green", label="server CPU (cores)")
        sessions = [(s.t, s.sessions) for s in level.scrapes if s.sessions is not None]
        if sessions:
            bottom.plot(*zip(*sessions), color="tab:purple", label="active sessions")
        memory = [(s.t, s.rss_bytes / 2**30) for s in level.scrapes if s.rss_bytes]
        if memory:
            bottom.plot(*zip(*memory), color="tab:orange", label="server memory (GiB)")
        bottom.set_xlabel("seconds since the soak began")
        bottom.legend(loc="upper left", fontsize="small")
        path = directory / f"lag_over_time_{level.streams}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    # Lag percentiles against the number of streams: the sweep's levels, or, for one ramped run,
    # the number of streams open when each caption arrived.
    if len(levels) > 1:
        groups = {level.streams: (level.lags("final"), level.lags("partial")) for level in levels}
    else:
        groups = _by_open_streams(levels[0])
    fig, axis = plt.subplots(figsize=(7, 4))
    xs = sorted(groups)
    for q, style in ((50, "-o"), (95, "-s"), (99, "-^")):
        axis.plot(xs, [percentile(groups[x][0], q) or np.nan for x in xs], style, color="tab:red",
                  alpha=q / 100, label=f"final p{q}")
        axis.plot(xs, [percentile(groups[x][1], q) or np.nan for x in xs], style, color="tab:blue",
                  alpha=q / 100, label=f"partial p{q}")
    axis.axhline(levels[0].target_s, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("concurrent streams")
    axis.set_ylabel("lag (s)")
    axis.legend(fontsize="small", ncols=2)
    fig.tight_layout()
    path = directory / "lag_vs_streams.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return paths + [path]


def _by_open_streams(level: Level) -> dict[int, tuple[list[float], list[float]]]:
    ends = {c.index: max([t for t, _ in c.finals + c.partials], default=c.start) for c in level.clients}
    groups: dict[int, tuple[list[float], list[float]]] = {}
    for c in level.clients:
        for index, points in ((0, c.finals), (1, c.partials)):
            for t, lag in points:
                n = sum(1 for o in level.clients if o.start <= t <= ends[o.index])
                groups.setdefault(n, ([], []))[index].append(lag)
    return groups


def run_soak(url: str, token: str | None, cafile: str | None, levels: list[int], duration: float, ramp: float,
             target: float, manifest: Path, report_dir: Path, metrics: str | None, coincide: bool = False) -> int:
    """`captioner soak`: one soak per level (stopping after the first that misses the target, in a sweep),
    with a progress bar, then the report. An exit status."""
    from tqdm import tqdm

    if not all(1 <= n <= 256 for n in levels) or not 5 <= duration <= 3600 or ramp < 0:
        raise UsageError("streams must be 1 to 256, duration 5 to 3600 s, ramp >= 0")
    if not manifest.is_file():
        raise UsageError(f"no manifest at {manifest} (give --manifest)")
    clips = read_manifest(manifest)
    try:  # fail fast, with one line, when nothing listens there
        asyncio.run(_probe(url, token, cafile))
    except ReplayError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return 1
    done: list = []
    for n in levels:
        bar = tqdm(total=round(ramp + duration), unit="s", file=sys.stderr, desc=f"{n} streams",
                   bar_format="{desc}: {n_fmt}/{total_fmt} s |{bar}| {postfix}")

        def tick(t: float, level: Level, bar: tqdm = bar) -> None:
            recent = [lag for c in level.clients for at, lag in c.finals if at > t - 30]
            p50, p95 = percentile(recent, 50), percentile(recent, 95)
            bar.n = min(bar.total, round(t))
            bar.set_postfix_str(
                f"sessions {sum(1 for c in level.clients if c.error is None)}/{n}, final lag (30 s) "
                + (f"p50 {p50:.2f} p95 {p95:.2f} s" if recent else "-")
                + f", errors {sum(1 for c in level.clients if c.error)}")

        level = asyncio.run(soak(url, clips, n, duration, ramp=ramp, target_s=target, token=token, cafile=cafile,
                                 on_tick=tick, metrics=metrics, coincide=coincide))
        bar.close()
        done.append(level)
        summary = level.summarize()
        print(f"{n} streams: final lag p50 {_s(summary.final_lag_p50)} p95 {_s(summary.final_lag_p95)}, "
              f"behind {summary.behind}, errors {summary.errors or 0}: "
              f"{'holds' if summary.holds else 'misses'} the target", file=sys.stderr)
        if not summary.holds and len(levels) > 1:
            break
        if len(levels) > 1:
            time.sleep(3)  # let the server close the last sessions
    meta = {"url": url, "manifest": str(manifest), "clips": len(clips), "ramp_s": ramp, "coincide": coincide,
            "duration_s": duration, "date": time.strftime("%Y-%m-%d %H:%M")}
    report = write_report(report_dir, done, meta)
    if len(levels) > 1:
        print(f"largest number of streams that holds the target: {largest_holding(done) or 'none'}")
    print(f"report: {report}")
    return 0


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


async def _probe(url: str, token: str | None, cafile: str | None) -> None:
    await replay(url, np.zeros(1600, dtype=np.float32), speed=0, token=token, cafile=cafile)
