"""Endpointing from speech probabilities, without a model."""

from __future__ import annotations

import pytest

from captioner.stream.endpoint import Endpointer, SpeechEnd, SpeechStart

WINDOW = 0.032


def endpointer(**overrides: float) -> Endpointer:
    settings = dict(window_s=WINDOW, threshold=0.5, release=0.35, min_speech_s=0.064, silence_s=0.5)
    settings.update(overrides)
    return Endpointer(**settings)


def test_speech_starts_after_min_speech_and_ends_after_silence():
    """Two speech windows open speech at the first one; 0.5 s below release closes it where silence began."""
    e = endpointer()
    decisions = e.push([0.1] * 10 + [0.9] * 20 + [0.1] * 20)
    assert decisions[0] == SpeechStart(pytest.approx(10 * WINDOW), pytest.approx(12 * WINDOW))
    end = decisions[1]
    assert isinstance(end, SpeechEnd)
    assert end.time == pytest.approx(30 * WINDOW)
    assert end.decided - end.time == pytest.approx(0.512, abs=WINDOW)


def test_a_single_speech_window_is_not_speech():
    assert endpointer().push([0.1, 0.9, 0.1, 0.9, 0.2] * 10) == []


def test_hysteresis_between_release_and_threshold():
    """Windows between the release and the threshold neither end speech nor reset a silence that began."""
    e = endpointer()
    assert len(e.push([0.9] * 5)) == 1
    assert e.push([0.45] * 40) == []  # uncertain: speech goes on
    decisions = e.push([0.2] + [0.45] * 20)
    assert len(decisions) == 1 and isinstance(decisions[0], SpeechEnd)


def test_speech_resets_silence():
    e = endpointer()
    e.push([0.9] * 5)
    assert e.push(([0.1] * 10 + [0.9]) * 5) == []  # 0.32 s pauses never reach 0.5 s
    assert e.in_speech


def test_close_ends_open_speech():
    e = endpointer()
    e.push([0.9] * 5)
    end = e.close(now=1.0)
    assert isinstance(end, SpeechEnd) and end.decided == 1.0 and not e.in_speech
    assert e.close(now=2.0) is None


def test_long_speech_ends_at_a_shorter_pause():
    """After long_speech_s of speech a pause of long_silence_s ends it; before, the same pause does not."""
    e = endpointer(long_silence_s=0.25, long_speech_s=3.0)
    e.push([0.9] * 5)
    assert e.push([0.9] * 40 + [0.1] * 10 + [0.9] * 5) == []  # a 0.32 s pause 1.4 s into speech
    decisions = e.push([0.9] * 60 + [0.1] * 10)  # the same pause 3.5 s in
    assert len(decisions) == 1 and isinstance(decisions[0], SpeechEnd)
    assert decisions[0].decided - decisions[0].time == pytest.approx(0.256, abs=WINDOW)
    e.push([0.9] * 5)  # new speech: the long silence again
    assert e.push([0.9] * 20 + [0.1] * 10) == []
