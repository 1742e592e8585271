"""The voice-activity wrapper (stream/vad.py): Silero's network over a live stream, real speech, no Whisper."""

from __future__ import annotations

import pytest
import torch

from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.stream.vad import WINDOW_SAMPLES, VoiceActivity


@pytest.fixture(scope="module")
def speech(samples) -> torch.Tensor:
    return load_audio(samples["LJ001-0001"]["path"])[: 4 * SAMPLE_RATE]


def test_probabilities_do_not_depend_on_how_the_stream_is_cut(speech):
    whole = VoiceActivity().push(speech)
    pieces, vad = [], VoiceActivity()
    for start in range(0, len(speech), 1234):  # frames that end inside windows
        pieces += vad.push(speech[start : start + 1234])
    assert len(whole) == len(pieces) == len(speech) // WINDOW_SAMPLES == vad.n_windows
    assert pieces == pytest.approx(whole, abs=1e-5)


def test_a_window_is_scored_only_when_complete():
    vad = VoiceActivity()
    assert vad.push(torch.zeros(WINDOW_SAMPLES - 1)) == []
    assert len(vad.push(torch.zeros(1))) == 1 and vad.n_windows == 1


def test_speech_is_voiced_and_silence_is_not(speech):
    silence = VoiceActivity().push(torch.zeros(2 * SAMPLE_RATE))
    assert max(silence) < 0.1
    voiced = VoiceActivity().push(speech)
    assert sum(p >= 0.5 for p in voiced) > 0.6 * len(voiced)


def test_streams_keep_their_own_state(speech):
    """Two streams share one network but not its recurrent state: interleaving them changes nothing."""
    alone = VoiceActivity().push(speech)
    a, b = VoiceActivity(), VoiceActivity()
    interleaved = []
    for start in range(0, len(speech), 4000):
        interleaved += a.push(speech[start : start + 4000])
        b.push(torch.zeros(4000))
    assert interleaved == pytest.approx(alone, abs=1e-5)


def test_a_quiet_voice_after_a_loud_one_is_heard(samples, speech):
    """Silero's state adapts to the loud speaker; after a second of silence it starts afresh, so the next
    speaker, 40 dB quieter, is heard as well as at the start of a stream (without the reset: not at all)."""
    quiet = load_audio(samples["LJ001-0001"]["path"])[4 * SAMPLE_RATE : 8 * SAMPLE_RATE] / 100
    alone = VoiceActivity().push(quiet)
    windows = len(quiet) // WINDOW_SAMPLES
    for reset_s, heard in ((1.0, True), (0.0, False)):
        vad = VoiceActivity(reset_s)
        after = vad.push(torch.cat([speech, torch.zeros(SAMPLE_RATE + 64), quiet]))[-windows:]
        assert (sum(p >= 0.5 for p in after) > 0.8 * sum(p >= 0.5 for p in alone)) is heard
