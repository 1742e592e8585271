"""The session's parts alone, and the session driven by a fake engine: no model, real speech for the VAD."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from support import N_MELS, NO_CONTEXT, FakeEngine, WordTokenizer

from captioner.decoder.timing import WordTiming
from captioner.stream.audio import load_audio
from captioner.stream.config import StreamConfig
from captioner.stream.events import Final, Partial
from captioner.stream.frames import FrameBuffer
from captioner.stream.jobs import FinalJob, UpdateJob
from captioner.stream.segments import SegmentPlanner
from captioner.stream.session import Session
from captioner.stream.triggers import Kind, Trigger, TriggerClock


@pytest.fixture(scope="module")
def speech(samples) -> torch.Tensor:
    return load_audio(samples["LJ001-0001"]["path"])


def session_events(audio: torch.Tensor, chunk: int, config: StreamConfig = NO_CONTEXT) -> list:
    engine = FakeEngine()
    session = Session(config, WordTokenizer(), N_MELS, engine.run)
    events = []
    for start in range(0, len(audio), chunk):
        events += session.feed(audio[start : start + chunk])
    return events + session.end()


def test_the_session_gives_partials_then_one_final_per_segment_whatever_the_chunking(speech):
    events = session_events(speech, 1600)
    assert events == session_events(speech, 4000) == session_events(speech, 333)
    finals = [e for e in events if isinstance(e, Final)]
    partials = [e for e in events if isinstance(e, Partial)]
    assert finals and partials
    assert len({f.segment for f in finals}) == len(finals)  # each final once
    assert {p.segment for p in partials} <= {f.segment for f in finals}  # every partial ends in a final
    for final in finals:  # the final keeps every word its partials made stable
        for partial in (p for p in partials if p.segment == final.segment):
            assert final.text.startswith(partial.stable)


def test_a_long_segment_is_cut_after_its_stable_words_and_goes_on(speech):
    config = replace(NO_CONTEXT, max_segment_s=3.0)
    events = session_events(speech, 1600, config)
    finals = [e for e in events if isinstance(e, Final)]
    assert len(finals) >= 3
    assert all(f.end - f.start <= 3.5 for f in finals if f.words)


def test_frame_buffer_windows_trims_and_finds_the_quietest_moment():
    buffer = FrameBuffer(N_MELS)
    speech = [0.9] * 94  # VAD windows of 512 samples (3.2 frames) over 3 s
    speech[1] = speech[3] = speech[8] = 0.1
    buffer.append(torch.randn(N_MELS, 301), speech)
    assert buffer.end == 301
    assert buffer.window(0, 301).shape == (N_MELS, 300)  # an even count
    assert buffer.window(100, 101) is None and buffer.window(0, 50, own_start=49) is None
    assert buffer.quietest_frame(0, 30) == 26  # the middle of window 8, the latest of the quietest
    assert buffer.quietest_frame(0, 20) == 10  # ...of window 3 when 8 is out of range
    buffer.trim(100)
    assert buffer.first_frame == 100 and buffer.end == 301 and buffer.frames.shape[1] == 201
    assert buffer.first_window == 31 and len(buffer.speech) == 94 - 31  # windows that end before frame 100 go
    activity = buffer.activity(100, 120, origin=50, threshold=0.5, release=0.35)
    assert activity.start_s == pytest.approx(31 * 0.032 - 0.5) and len(activity.probabilities) == 7


def test_the_trigger_clock_ticks_while_speech_is_open_and_ends_it(speech):
    config = StreamConfig()
    clock = TriggerClock(config)
    assert len(clock.push(speech[:32000])) == 32000 // 512
    kinds = [t.kind for t in clock.triggers]
    assert kinds[0] is Kind.START and Kind.TICK in kinds and Kind.END not in kinds
    start = clock.triggers[0].speech_sample
    ticks = [t.sample for t in clock.triggers if t.kind is Kind.TICK]
    assert ticks[0] == max(start + round(config.first_update_s * 16000), clock.triggers[0].sample + 1)
    assert all(b - a == round(config.update_interval_s * 16000) for a, b in zip(ticks[1:], ticks[2:]))
    clock.close()
    assert clock.triggers[-1].kind is Kind.END and clock.triggers[-1].sample == 32000
    # behind real time: a tick with a later tick or the end already due is passed over
    taken = []
    while (trigger := clock.next(skip_stale=True)) is not None:
        taken.append(trigger.kind)
    assert taken == [Kind.START, Kind.END]


def test_the_planner_opens_updates_and_closes_a_segment_with_its_context():
    config = StreamConfig(preroll_s=0.3)
    buffer = FrameBuffer(N_MELS)
    buffer.append(torch.randn(N_MELS, 500), [0.9] * 156)
    planner = SegmentPlanner(config, buffer)
    assert planner.job_for(Trigger(8000, Kind.START, speech_sample=16000), 50) is None
    segment = planner.segment
    assert segment is not None and segment.start == 100 - 30  # speech at 1 s, less the preroll
    update = planner.job_for(Trigger(32000, Kind.TICK), 200)
    assert isinstance(update, UpdateJob) and update.mel.shape[1] == 130 and update.prefix == []
    final = planner.job_for(Trigger(48000, Kind.END, speech_sample=40000), 300)
    assert isinstance(final, FinalJob) and final.mel.shape[1] == 230 and final.activity is not None
    from captioner.stream.segments import Said

    said = Said([7, 8], [WordTiming(" w7", [7], 0.3, 0.6, 0.9), WordTiming(" w8", [8], 1.0, 1.4, 0.9)], 0.7)
    assert planner.finish(Trigger(48000, Kind.END), final, said) is None
    assert planner.segment is None and planner.released == 300
    # the next segment decodes after those words, as context
    planner.job_for(Trigger(56000, Kind.START, speech_sample=52000), 350)
    assert planner.segment.context == [7, 8] and planner.segment.context_start == 100 - 30
