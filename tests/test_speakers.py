"""Speaker labels: the tracker on synthetic speakers (no model), then the real speaker encoder on real speech."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.stream.config import StreamConfig
from captioner.stream.embeddings import SpeakerWindow
from captioner.stream.events import Final, Word, event_to_dict
from captioner.stream.speakers import SpeakerLabels, SpeakerTracker, speaker_number

CONFIG = StreamConfig()
DIM = 256


def speaker_direction(k: int) -> np.ndarray:
    """Speaker k's embedding: orthogonal to every other speaker's."""
    v = np.zeros(DIM)
    v[k] = 1.0
    return v


def windows_of(turns: list[tuple[int, float, float]], rng: np.random.Generator, hop: float = 0.8,
               noise: float = 0.3) -> list[SpeakerWindow]:
    """1.6 s windows every hop over (speaker, start, end) turns, each a noisy copy of its speaker's embedding."""
    out = []
    for speaker, start, end in turns:
        t = start
        while t + 1.6 <= end + 1e-9:
            e = speaker_direction(speaker) + noise * rng.standard_normal(DIM) / np.sqrt(DIM)
            out.append(SpeakerWindow(round(t, 3), round(t + 1.6, 3), e / np.linalg.norm(e)))
            t += hop
    return out


def words_over(start: float, end: float, step: float = 0.4) -> list[Word]:
    n = int(round((end - start) / step))
    return [Word(f"w{i}", round(start + i * step, 3), round(start + i * step + 0.3, 3), 0.9) for i in range(n)]


def final_of(turns: list[tuple[int, float, float]]) -> Final:
    words = [w for _, start, end in turns for w in words_over(start, end)]
    return Final(0, " ".join(w.word for w in words), words[0].start, words[-1].end, words)


def label(tracker: SpeakerTracker, turns: list[tuple[int, float, float]], seed: int = 0) -> Final:
    return tracker.label(final_of(turns), windows_of(turns, np.random.default_rng(seed)))


def test_speakers_are_numbered_in_order_of_first_appearance():
    tracker = SpeakerTracker(CONFIG)
    labels = [label(tracker, [(k, t, t + 4)]).speaker for k, t in [(5, 0), (2, 5), (5, 10), (7, 15), (2, 20)]]
    assert labels == ["S1", "S2", "S1", "S3", "S2"]
    assert tracker.n_speakers == 3 and speaker_number("S3") == 2


def test_a_change_of_speaker_inside_a_final_splits_its_words():
    final = label(SpeakerTracker(CONFIG), [(0, 0.0, 4.8), (1, 4.8, 8.0)])
    speakers = [w.speaker for w in final.words]
    change = speakers.index("S2")
    assert speakers == ["S1"] * change + ["S2"] * (len(speakers) - change)
    assert abs(final.words[change].start - 4.8) <= 0.8  # at the change, give or take a word or two
    assert final.speaker == "S1"  # most of its speech


def test_one_speaker_keeps_one_label_however_long():
    final = label(SpeakerTracker(CONFIG), [(3, 0.0, 20.0)], seed=1)
    assert {w.speaker for w in final.words} == {"S1"} and final.speaker == "S1"


def test_max_speakers_bounds_the_labels():
    tracker = SpeakerTracker(replace(CONFIG, max_speakers=2))
    labels = [label(tracker, [(k, 5 * k, 5 * k + 4)]).speaker for k in range(4)]
    assert labels[:2] == ["S1", "S2"] and set(labels) == {"S1", "S2"}


def test_too_little_speech_enrols_nobody():
    """A stretch with fewer windows than min_new_speaker_windows goes to a known speaker, not a new one."""
    assert CONFIG.min_new_speaker_windows == 3
    tracker = SpeakerTracker(CONFIG)
    label(tracker, [(0, 0, 4)])
    assert label(tracker, [(1, 5, 7.4)]).speaker == "S1"  # two windows only
    assert label(tracker, [(1, 8, 12)]).speaker == "S2"


def test_a_final_without_speech_windows_keeps_the_current_speaker():
    tracker = SpeakerTracker(CONFIG)
    short = final_of([(0, 0.0, 0.8)])
    assert tracker.label(short, []).speaker == "S1"  # a placeholder: the first speaker heard takes it
    assert label(tracker, [(4, 2, 6)]).speaker == "S1"
    assert tracker.label(Final(1, "", 7, 7), []).speaker == "S1"
    assert label(tracker, [(9, 8, 12)]).speaker == "S2"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=1, max_size=12), st.integers(0, 2**16))
def test_labelled_finals_never_change(turns, seed):
    """Over random turn orders (speaker, utterances), every final's labels stay as first sent, each word has
    one, labels appear in order, and each label stands for one speaker."""
    tracker = SpeakerTracker(CONFIG)
    rng = np.random.default_rng(seed)
    sent: list[tuple[Final, dict, int]] = []
    t = 0.0
    for speaker, utterances in turns:
        for _ in range(utterances):
            length = float(rng.uniform(3.3, 8.0))
            final = tracker.label(final_of([(speaker, t, t + length)]), windows_of([(speaker, t, t + length)], rng))
            sent.append((final, event_to_dict(final), speaker))
            t += length + float(rng.uniform(0.2, 1.0))
    assert all(event_to_dict(final) == snapshot for final, snapshot, _ in sent)
    labels = [final.speaker for final, _, _ in sent]
    assert all(w.speaker == final.speaker for final, _, _ in sent for w in final.words)
    first_seen = list(dict.fromkeys(labels))
    assert first_seen == [f"S{k + 1}" for k in range(len(first_seen))]
    assert len({(final.speaker, truth) for final, _, truth in sent}) == len(set(labels)) == len({s for s, _ in turns})


def test_labels_come_from_the_audio_of_the_finals_words():
    """SpeakerLabels hands the speaker embedder each final's own stretch of audio, at its place on the stream."""
    seen: list[tuple[float, float, float]] = []

    def embedder(pcm: torch.Tensor, offset: float) -> list[SpeakerWindow]:
        seen.append((offset, len(pcm) / SAMPLE_RATE, float(pcm.mean())))
        return windows_of([(int(pcm.mean().round()), offset, offset + len(pcm) / SAMPLE_RATE)],
                          np.random.default_rng(0))

    labels = SpeakerLabels(CONFIG, embedder)
    for k, speaker in enumerate([0, 1, 0]):  # 10 s each; the sample values say who speaks
        labels.push(torch.full((10 * SAMPLE_RATE,), float(speaker)))
    finals = [labels.label(final_of([(0, t, t + 8)])) for t in (1, 11, 21)]
    assert [f.speaker for f in finals] == ["S1", "S2", "S1"]
    assert [(round(o, 2), round(n, 2), m) for o, n, m in seen] == [(1, 7.9, 0), (11, 7.9, 1), (21, 7.9, 0)]


def test_labels_keep_only_recent_audio():
    from captioner.stream.speakers import HISTORY_S

    labels = SpeakerLabels(CONFIG, lambda pcm, offset: [])
    for _ in range(int(3 * HISTORY_S)):
        labels.push(torch.zeros(SAMPLE_RATE))
    assert sum(len(c) for c in labels._chunks) <= 2 * HISTORY_S * SAMPLE_RATE


@pytest.mark.parametrize("field,value", [("max_speakers", 0), ("new_speaker_similarity", 1.5),
                                         ("change_similarity", -2), ("speaker_hop_s", 2.0),
                                         ("max_speaker_wait_s", 0), ("min_new_speaker_windows", 0)])
def test_speaker_settings_are_checked(field, value):
    with pytest.raises(ValueError):
        StreamConfig(**{field: value})


# -- the real speaker encoder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    from captioner.model.speaker_encoder import load_speaker_encoder
    from captioner.stream.embeddings import SpeakerEmbedder

    return SpeakerEmbedder(load_speaker_encoder(), CONFIG.speaker_window_s, CONFIG.speaker_hop_s,
                           CONFIG.max_speaker_wait_s)


def mean_embedding(windows: list[SpeakerWindow]) -> np.ndarray:
    total = np.stack([w.embedding for w in windows]).sum(axis=0)
    return total / np.linalg.norm(total)


def test_the_speaker_encoder_tells_speakers_apart(embedder, samples):
    """Two utterances of one LibriSpeech reader are far more alike than either is to the LJ Speech reader."""
    means = {name: mean_embedding(embedder(load_audio(samples[name]["path"]), 0.0))
              for name in ("1688-142285-0000", "1688-142285-0001", "LJ001-0001")}
    same = float(means["1688-142285-0000"] @ means["1688-142285-0001"])
    other = max(float(means[a] @ means["LJ001-0001"]) for a in ("1688-142285-0000", "1688-142285-0001"))
    assert same > CONFIG.new_speaker_similarity > other
    assert same - other > 0.15


def test_windows_are_placed_on_the_streams_clock_and_bounded(embedder, samples):
    pcm = load_audio(samples["two_cities"]["path"])
    bound = max(4, int(CONFIG.max_speaker_wait_s / embedder.window_cost_s))  # from the cost measured so far
    windows = embedder(pcm, 100.0)
    assert windows[0].start == 100.0 and abs(windows[-1].end - (100 + len(pcm) / SAMPLE_RATE)) < 0.02
    assert all(abs(np.linalg.norm(w.embedding) - 1) < 1e-5 for w in windows)
    assert len(windows) == bound < 44 / CONFIG.speaker_hop_s  # fewer than the hop would give: the wait bound
    assert embedder(pcm[: SAMPLE_RATE // 4], 0.0) == []  # too short to say who speaks


def test_a_damaged_speaker_encoder_file_is_a_clear_error(tmp_path):
    from captioner.model.errors import ModelError
    from captioner.model.speaker_encoder import load_speaker_encoder

    bad = tmp_path / "speaker_encoder.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a speaker encoder"):
        load_speaker_encoder(bad)
    with pytest.raises(ModelError, match="cannot read"):
        load_speaker_encoder(tmp_path / "missing.pt")
