"""One caption topic's live subtitles for HLS: a sliding-window media playlist of WebVTT segments (RFC 8216).

Nothing here does I/O or reads a clock: times come in as timeline seconds since `epoch`. Segment n covers
[n * segment_s, (n + 1) * segment_s) and is sealed, its text fixed for good, in order, once `heard` reaches its
end, once `now` passes its end by max_delay_s (a final still pending then is late), or at end().

Placement: a cue goes into the one segment its start falls in, and is not repeated in later segments it
overlaps: ffmpeg's HLS demuxer does not deduplicate cues across segments, so a repeated cue would be read
twice. A late cue, whose segment is already sealed, goes into the first unsealed segment with its own times
unchanged; players place cues by their times, not by the segment that carries them. Sealing by `now` happens
when a playlist or segment is asked for, so a segment no one has been shown still takes its own late cues.

Cue times are timeline seconds, mapped by every segment's X-TIMESTAMP-MAP (LOCAL 0 is MPEGTS `mpegts`, the
video's PTS at timeline 0), so each segment's file gives the same times. (ffmpeg ignores the map and
EXT-X-PROGRAM-DATE-TIME and reads the cue times as written; hls.js and Safari apply the map.)

Memory: only non-empty sealed segments in the last KEPT_WINDOWS windows are kept as text; empty ones are
rendered from their number, so a gap of an hour costs nothing. Cues not yet sealed are capped at max_cues;
beyond, the oldest segment holding cues is sealed early (a final is never dropped; a later cue for it is late).
"""

from __future__ import annotations

import datetime
import enum
import math
from dataclasses import dataclass

from .transcripts import vtt_time

__all__ = ["LiveSubtitles", "Cue", "State", "render_segment", "SEGMENT_URI", "KEPT_WINDOWS"]

MPEGTS_WRAP = 2**33  # X-TIMESTAMP-MAP's MPEGTS is a 33-bit count of 90 kHz ticks
SEGMENT_URI = "subtitles/{n}.vtt"  # relative to the playlist (/v1/captions/{topic}/subtitles.m3u8)
# RFC 8216 6.2.2: a segment that left the playlist stays available for its own and the playlist's duration
KEPT_WINDOWS = 2  # windows of sealed segments kept readable: the listed one and one more
MIN_CUE_MS = 1  # a WebVTT cue must end after it starts
ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


class State(enum.Enum):
    LIVE = "live"  # segments seal as time passes
    ENDED = "ended"  # the speaker ended: all sealed, the playlist carries #EXT-X-ENDLIST


@dataclass(frozen=True)
class Cue:
    """One final caption, as added."""

    start: float  # timeline seconds
    end: float  # timeline seconds
    text: str  # plain text, not yet escaped
    speaker: str | None  # voice tag's name; None: no voice tag


class LiveSubtitles:
    """A topic's live WebVTT segments and their playlist; the caller feeds finals and the committed point."""

    def __init__(self, epoch: float, segment_s: float = 6.0, window: int = 10, max_delay_s: float = 10.0,
                 mpegts: int = 0, max_cues: int = 1_000) -> None:
        """`epoch` is the Unix time of timeline 0; `window` the segments the playlist lists; `mpegts` the
        X-TIMESTAMP-MAP PTS of timeline 0. Raises ValueError for a limit out of range."""
        if not (segment_s > 0 and window >= 1 and max_delay_s >= 0 and 0 <= mpegts < MPEGTS_WRAP and max_cues >= 1):
            raise ValueError("segment_s > 0, window >= 1, max_delay_s >= 0, 0 <= mpegts < 2**33 and max_cues >= 1")
        self.epoch, self.segment_s, self.window, self.max_delay_s = epoch, segment_s, window, max_delay_s
        self.mpegts, self.max_cues = mpegts, max_cues
        self.state = State.LIVE
        self.n_sealed = 0  # segments 0 .. n_sealed - 1 are sealed; later ones are not
        self.heard_s = 0.0  # every final starting before this has been added
        self._pending: dict[int, list[Cue]] = {}  # unsealed segment -> its cues
        self._n_pending = 0
        self._texts: dict[int, str] = {}  # sealed non-empty segment -> its WebVTT, in segment order

    def add(self, start: float, end: float, text: str, speaker: str | None = None) -> None:
        """Take one final caption; blank text makes no cue. A final after end() is sealed at once."""
        text = "\n".join(line.strip() for line in text.splitlines() if line.strip())  # a blank line ends a cue
        if not text:
            return
        n = max(math.floor(start / self.segment_s), self.n_sealed)
        self._pending.setdefault(n, []).append(Cue(start, end, text, speaker))
        self._n_pending += 1
        while self._n_pending > self.max_cues:
            self._seal(min(self._pending) + 1)
        if self.state is State.ENDED:
            self._seal(n + 1)

    def heard(self, t: float) -> None:
        """Every final that starts before timeline second `t` has been added; seals the segments it completes."""
        self.heard_s = max(self.heard_s, t)
        if self.state is State.LIVE:
            self._seal(math.floor(self.heard_s / self.segment_s))

    def end(self) -> None:
        """The speaker ended cleanly: seal every segment up to the last heard time and the last cue."""
        self._seal(max(math.ceil(self.heard_s / self.segment_s), max(self._pending, default=-1) + 1))
        self.state = State.ENDED

    def resume(self) -> None:
        """A new session started after end(): the playlist is live again."""
        self.state = State.LIVE

    def playlist(self, now: float, query: str = "") -> str:
        """The media playlist at timeline second `now`, after sealing what is due. `query` ("?token=...",
        already URL-encoded) follows each segment URI, as a relative URI drops the playlist's own query."""
        self._seal_due(now)
        first = max(0, self.n_sealed - self.window)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{math.ceil(self.segment_s)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for n in range(first, self.n_sealed):
            lines += [f"#EXT-X-PROGRAM-DATE-TIME:{self._date_time(n)}", f"#EXTINF:{self.segment_s:.3f},",
                      SEGMENT_URI.format(n=n) + query]
        if self.state is State.ENDED:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def segment(self, n: int, now: float) -> str | None:
        """Sealed segment `n`'s WebVTT at timeline second `now`; None if not sealed yet or no longer kept."""
        self._seal_due(now)
        if not max(0, self.n_sealed - KEPT_WINDOWS * self.window) <= n < self.n_sealed:
            return None
        return self._texts.get(n) or render_segment([], self.mpegts)

    def _seal_due(self, now: float) -> None:
        if self.state is State.LIVE:
            self._seal(math.floor((now - self.max_delay_s) / self.segment_s))

    def _seal(self, n_sealed: int) -> None:
        """Seal every segment before `n_sealed`, in order, and forget those past keeping."""
        if n_sealed <= self.n_sealed:
            return
        for n in sorted(n for n in self._pending if n < n_sealed):
            cues = self._pending.pop(n)
            self._n_pending -= len(cues)
            self._texts[n] = render_segment(cues, self.mpegts)
        self.n_sealed = n_sealed
        oldest = n_sealed - KEPT_WINDOWS * self.window
        while self._texts and next(iter(self._texts)) < oldest:
            del self._texts[next(iter(self._texts))]

    def _date_time(self, n: int) -> str:
        moment = datetime.datetime.fromtimestamp(self.epoch + n * self.segment_s, datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_segment(cues: list[Cue], mpegts: int = 0) -> str:
    """One WebVTT segment: its header and `cues` in start order (an empty segment is the header alone)."""
    parts = [f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{mpegts},LOCAL:00:00:00.000\n\n"]
    for cue in sorted(cues, key=lambda cue: (cue.start, cue.end)):
        start_ms = max(0, round(cue.start * 1000))
        end_ms = max(round(cue.end * 1000), start_ms + MIN_CUE_MS)
        text = cue.text.translate(ESCAPES)
        if cue.speaker:
            text = f"<v {' '.join(cue.speaker.split()).translate(ESCAPES)}>{text}"
        parts.append(f"{vtt_time(start_ms / 1000)} --> {vtt_time(end_ms / 1000)}\n{text}\n\n")
    return "".join(parts)
