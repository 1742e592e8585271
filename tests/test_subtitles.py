"""Live HLS subtitles (server/subtitles.py): sealing, cue placement, the sliding playlist, and ffmpeg reading it."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import pytest
import srt
import webvtt

from captioner.server.subtitles import KEPT_WINDOWS, LiveSubtitles, render_segment

EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z
HEADER = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n"
FFMPEG = shutil.which("ffmpeg")


def listed(playlist: str) -> list[int]:
    """The segment numbers a playlist lists, in order."""
    return [int(n) for n in re.findall(r"^subtitles/(\d+)\.vtt", playlist, re.MULTILINE)]


def cue_texts(vtt: str) -> list[str]:
    """The cue payloads of one WebVTT segment, as written."""
    return [caption.raw_text for caption in webvtt.from_buffer(io.StringIO(vtt)).captions]


def test_empty_playlist_before_any_segment_is_sealed() -> None:
    """Before any segment is sealed the playlist is valid and lists nothing, from media sequence 0."""
    subtitles = LiveSubtitles(EPOCH)
    assert subtitles.playlist(now=15.9) == (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:0\n")
    assert subtitles.segment(0, now=15.9) is None


def test_playlist_lines() -> None:
    """Each segment gets its program date time, its EXTINF and its relative URI with the query; the target
    duration is the segment length rounded up."""
    subtitles = LiveSubtitles(EPOCH, segment_s=6.5)
    subtitles.heard(13.0)
    assert subtitles.playlist(now=13.0, query="?token=ek_1") == (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:7\n#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n#EXTINF:6.500,\nsubtitles/0.vtt?token=ek_1\n"
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:26.500Z\n#EXTINF:6.500,\nsubtitles/1.vtt?token=ek_1\n"
    )


def test_heard_seals_completed_segments() -> None:
    """A segment is sealed once the committed point reaches its end, and not before."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(1.0, 2.0, "one")
    subtitles.add(7.0, 8.0, "two")
    subtitles.heard(11.9)
    assert listed(subtitles.playlist(now=11.9)) == [0]
    assert subtitles.segment(1, now=11.9) is None
    subtitles.heard(12.0)
    assert listed(subtitles.playlist(now=12.0)) == [0, 1]
    assert cue_texts(subtitles.segment(1, now=12.0)) == ["two"]


def test_heard_is_monotonic() -> None:
    """An earlier committed point does not take back a later one."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.heard(12.0)
    subtitles.heard(3.0)
    assert subtitles.heard_s == 12.0
    assert listed(subtitles.playlist(now=12.0)) == [0, 1]


def test_now_seals_after_max_delay() -> None:
    """Without a committed point, a segment is sealed max_delay_s after its end."""
    subtitles = LiveSubtitles(EPOCH, max_delay_s=10.0)
    subtitles.add(1.0, 2.0, "one")
    assert listed(subtitles.playlist(now=15.999)) == []
    assert subtitles.segment(0, now=16.0) == HEADER + "00:00:01.000 --> 00:00:02.000\none\n\n"
    assert listed(subtitles.playlist(now=16.0)) == [0]


def test_late_cue_goes_to_first_unsealed_segment() -> None:
    """A final whose segment is sealed goes into the first unsealed segment with its own times; sealed text
    never changes."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(7.0, 8.0, "on time")
    subtitles.heard(12.0)
    sealed = [subtitles.segment(n, now=12.0) for n in (0, 1)]
    subtitles.add(2.0, 3.5, "late")
    subtitles.heard(18.0)
    assert [subtitles.segment(n, now=18.0) for n in (0, 1)] == sealed
    assert subtitles.segment(2, now=18.0) == HEADER + "00:00:02.000 --> 00:00:03.500\nlate\n\n"


def test_cue_is_only_in_the_segment_of_its_start() -> None:
    """A cue overlapping later segments is written once, in the segment its start falls in."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(5.0, 20.0, "long")
    subtitles.heard(24.0)
    texts = [cue_texts(subtitles.segment(n, now=24.0)) for n in range(4)]
    assert texts == [["long"], [], [], []]


def test_cues_in_start_order() -> None:
    """A segment's cues are written in start order whatever order they came in."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(4.0, 5.0, "second")
    subtitles.add(1.0, 2.0, "first")
    subtitles.heard(6.0)
    assert cue_texts(subtitles.segment(0, now=6.0)) == ["first", "second"]


def test_window_slides_and_media_sequence_follows() -> None:
    """The playlist lists the last `window` sealed segments, numbered from its media sequence."""
    subtitles = LiveSubtitles(EPOCH, window=3)
    subtitles.heard(5 * 6.0)
    playlist = subtitles.playlist(now=30.0)
    assert listed(playlist) == [2, 3, 4]
    assert "#EXT-X-MEDIA-SEQUENCE:2\n" in playlist
    assert "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:32.000Z\n#EXTINF:6.000,\nsubtitles/2.vtt\n" in playlist


def test_segments_kept_after_leaving_the_window() -> None:
    """A segment stays readable for another window after it leaves the playlist, then is gone."""
    subtitles = LiveSubtitles(EPOCH, window=3)
    subtitles.add(1.0, 2.0, "first")
    subtitles.heard(6.0 * 3 * KEPT_WINDOWS)
    assert cue_texts(subtitles.segment(0, now=0.0)) == ["first"]
    subtitles.heard(6.0 * (3 * KEPT_WINDOWS + 1))
    assert subtitles.segment(0, now=0.0) is None
    assert subtitles.segment(-1, now=0.0) is None


def test_end_seals_everything_and_ends_the_playlist() -> None:
    """end() seals the partial last segment and every pending cue, and the playlist ends; resume() takes the end
    back."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(1.0, 2.0, "one")
    subtitles.add(13.0, 14.0, "three")
    subtitles.heard(7.0)
    subtitles.end()
    playlist = subtitles.playlist(now=7.0)
    assert listed(playlist) == [0, 1, 2] and playlist.endswith("subtitles/2.vtt\n#EXT-X-ENDLIST\n")
    assert listed(subtitles.playlist(now=1000.0)) == [0, 1, 2]  # an ended playlist no longer grows with time
    subtitles.resume()
    subtitles.add(20.0, 21.0, "four")
    subtitles.heard(24.0)
    playlist = subtitles.playlist(now=24.0)
    assert listed(playlist) == [0, 1, 2, 3] and "#EXT-X-ENDLIST" not in playlist


def test_final_after_end_is_sealed_at_once() -> None:
    """A final that arrives after end() is not left pending."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.heard(6.0)
    subtitles.end()
    subtitles.add(3.0, 4.0, "stray")
    assert listed(subtitles.playlist(now=6.0)) == [0, 1]
    assert cue_texts(subtitles.segment(1, now=6.0)) == ["stray"]


def test_escaping_and_voice_tag() -> None:
    """Text escapes & < > and a speaker becomes a voice tag; blank lines inside a text are dropped."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(1.0, 2.0, "a < b && c > d --> e", speaker="S1")
    subtitles.add(2.0, 3.0, "line one\n\nline two")
    subtitles.heard(6.0)
    assert subtitles.segment(0, now=6.0) == HEADER + (
        "00:00:01.000 --> 00:00:02.000\n<v S1>a &lt; b &amp;&amp; c &gt; d --&gt; e\n\n"
        "00:00:02.000 --> 00:00:03.000\nline one\nline two\n\n"
    )


def test_blank_text_makes_no_cue() -> None:
    """A final with only whitespace adds no cue."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(1.0, 2.0, " \n ")
    subtitles.heard(6.0)
    assert subtitles.segment(0, now=6.0) == HEADER == render_segment([])


@pytest.mark.parametrize(("start", "end", "timing"), [
    (1.0, 1.0, "00:00:01.000 --> 00:00:01.001"),
    (2.0, 1.0, "00:00:02.000 --> 00:00:02.001"),
    (-0.5, 0.25, "00:00:00.000 --> 00:00:00.250"),
    (3723.0044, 3723.5, "01:02:03.004 --> 01:02:03.500"),
], ids=["empty", "reversed", "before-epoch", "hours"])
def test_cue_timing(start: float, end: float, timing: str) -> None:
    """Cue times are milliseconds from timeline 0, and a cue always ends after it starts."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(start, end, "x")
    subtitles.end()
    assert timing + "\nx\n" in subtitles.segment(max(0, int(start // 6)), now=0.0)


def test_x_timestamp_map_carries_mpegts() -> None:
    """Every segment, empty or not, maps LOCAL 0 to the given MPEG-TS time."""
    subtitles = LiveSubtitles(EPOCH, mpegts=900_000)
    subtitles.add(7.0, 8.0, "x")
    subtitles.heard(12.0)
    for n in (0, 1):
        assert subtitles.segment(n, now=12.0).startswith("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n\n")


def test_big_gap_is_cheap() -> None:
    """A first final an hour in creates no objects for the empty hour before it; empty segments render on demand."""
    subtitles = LiveSubtitles(EPOCH)
    subtitles.add(3601.0, 3602.0, "an hour in")
    subtitles.heard(3606.0)
    assert listed(subtitles.playlist(now=3606.0)) == list(range(591, 601))
    assert len(subtitles._texts) == 1
    assert subtitles.segment(595, now=3606.0) == HEADER
    assert cue_texts(subtitles.segment(600, now=3606.0)) == ["an hour in"]
    assert subtitles.segment(0, now=3606.0) is None


def test_memory_is_bounded() -> None:
    """Over many segments only the kept ones are held as text."""
    subtitles = LiveSubtitles(EPOCH, window=4)
    for n in range(200):
        subtitles.add(n * 6.0 + 1, n * 6.0 + 2, f"cue {n}")
        subtitles.heard((n + 1) * 6.0)
    assert len(subtitles._texts) == 4 * KEPT_WINDOWS
    assert list(subtitles._texts) == list(range(200 - 4 * KEPT_WINDOWS, 200))


def test_max_cues_seals_early_without_losing_a_final() -> None:
    """Past max_cues pending cues the oldest segment is sealed early; every final is still written once."""
    subtitles = LiveSubtitles(EPOCH, max_cues=3)
    for n in range(5):
        subtitles.add(n * 6.0 + 1, n * 6.0 + 2, f"cue {n}")
    assert listed(subtitles.playlist(now=0.0)) == [0, 1]
    subtitles.add(3.0, 4.0, "late")  # segment 0 is sealed early: the cue is late
    subtitles.end()
    texts = [cue_texts(subtitles.segment(n, now=0.0)) for n in range(5)]
    assert texts == [["cue 0"], ["cue 1"], ["late", "cue 2"], ["cue 3"], ["cue 4"]]


@pytest.mark.parametrize("options", [
    {"segment_s": 0.0}, {"window": 0}, {"max_delay_s": -1.0}, {"mpegts": -1}, {"mpegts": 2**33}, {"max_cues": 0},
], ids=["segment_s", "window", "max_delay_s", "mpegts-negative", "mpegts-33-bits", "max_cues"])
def test_invalid_limits_are_refused(options: dict) -> None:
    """A limit out of range raises ValueError at construction."""
    with pytest.raises(ValueError):
        LiveSubtitles(EPOCH, **options)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (Debian: apt-get install ffmpeg)")
def test_ffmpeg_reads_the_finals_back(tmp_path) -> None:
    """ffmpeg's HLS demuxer reads the ended playlist into SubRip cues equal to the finals, each once, at their
    times (a late one and one spanning segments included)."""
    finals = [(0.5, 2.0, "Hello & welcome.", "S1"), (5.0, 13.0, "This one spans two segments.", None),
              (14.0, 15.5, "Is <this> late?", "S2"), (9.0, 10.0, "A late final.", None),
              (40.25, 41.75, "After a silence.", None)]
    subtitles = LiveSubtitles(EPOCH, mpegts=900_000)
    for start, end, text, speaker in finals[:3]:
        subtitles.add(start, end, text, speaker)
    subtitles.heard(16.0)
    subtitles.playlist(now=16.0)
    for start, end, text, speaker in finals[3:]:
        subtitles.add(start, end, text, speaker)
    subtitles.end()
    (tmp_path / "subtitles").mkdir()
    playlist = subtitles.playlist(now=42.0)
    (tmp_path / "subtitles.m3u8").write_text(playlist)
    for n in listed(playlist):
        (tmp_path / "subtitles" / f"{n}.vtt").write_text(subtitles.segment(n, now=42.0))
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-i", "subtitles.m3u8", "out.srt"], cwd=tmp_path,
                   check=True, timeout=60)
    got = list(srt.parse((tmp_path / "out.srt").read_text()))
    expected = sorted(finals)
    assert [subtitle.content for subtitle in got] == [text for _, _, text, _ in expected]
    for subtitle, (start, end, _, _) in zip(got, expected):
        assert abs(subtitle.start.total_seconds() - start) < 0.1 and abs(subtitle.end.total_seconds() - end) < 0.1
