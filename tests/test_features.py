"""Log-mel features: equal to openai-whisper's reference, and the same whatever the chunking."""

from __future__ import annotations

import random

import pytest
import torch
import whisper

from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.stream.features import FRAMES_PER_SECOND, FeatureStream, clip_maximum, log_mel_spectrogram, normalize
from captioner.stream.frames import FrameBuffer


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("clip", ["two_cities", "LJ001-0001"])
def test_log_mel_matches_openai_whisper(samples, clip, n_mels):
    """Within 1e-4 of whisper.log_mel_spectrogram on real speech (zero-padded as its transcribe does)."""
    audio = load_audio(samples[clip]["path"])
    ours = log_mel_spectrogram(audio, n_mels)
    reference = whisper.log_mel_spectrogram(audio, n_mels=n_mels, padding=whisper.audio.N_SAMPLES)
    reference = reference[:, : len(audio) // whisper.audio.HOP_LENGTH]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4


def test_incremental_frames_do_not_depend_on_chunking(samples):
    """Each sample becomes frames once; 10 ms, 1 s and random chunks give identical frames."""
    audio = load_audio(samples["1688-142285-0000"]["path"])[:80000]
    whole = torch.cat([FeatureStream().push(audio)], dim=1)
    outputs = []
    for sizes in ([160] * 1000, [16000] * 10, [random.Random(1).randint(1, 3000) for _ in range(200)]):
        stream = FeatureStream()
        frames, start = [], 0
        for size in sizes:
            if start >= len(audio):
                break
            frames.append(stream.push(audio[start : start + size]))
            start += size
        frames.append(stream.push(audio[start:]))
        outputs.append(torch.cat(frames, dim=1))
        assert stream.n_frames == outputs[-1].shape[1]
    for frames in outputs:
        assert torch.allclose(frames, whole[:, : frames.shape[1]], atol=1e-5)


def test_frame_count_and_finish(samples):
    """n samples give n // 160 frames once finished, for short and odd lengths too."""
    audio = load_audio(samples["LJ001-0001"]["path"])
    for n in [0, 1, 150, 201, 399, 400, 16000, 16159]:
        stream = FeatureStream()
        frames = torch.cat([stream.push(audio[:n]), stream.finish()], dim=1)
        assert frames.shape == (80, n // 160)


def test_normalize_floor():
    """Frames are floored 8 log10 units below the maximum and scaled by (x + 4) / 4."""
    raw = torch.tensor([[0.0, -10.0, 2.0]])
    assert torch.allclose(normalize(raw, 2.0), torch.tensor([[1.0, (-6.0 + 4) / 4, 1.5]]))


def _window(audio: torch.Tensor, floor_max: float | None, stop: int) -> torch.Tensor:
    """Frames [0, stop) as a session hands them to the encoder, the audio streamed in 100 ms chunks."""
    stream, buffer = FeatureStream(floor_max=floor_max), FrameBuffer(80)
    for start in range(0, len(audio), SAMPLE_RATE // 10):
        buffer.append(stream.push(audio[start : start + SAMPLE_RATE // 10]), [])
    buffer.append(stream.finish(), [])
    return buffer.window(0, stop)


def test_floor_max_gives_whispers_whole_clip_floor(samples):
    """Given the clip's maximum in advance (floor_max), windows are floored as Whisper floors the whole clip,
    even before the loudest frame is heard; without it, at the running maximum."""
    speech = load_audio(samples["LJ001-0001"]["path"])[: 3 * SAMPLE_RATE]
    audio = torch.cat([speech / 100, speech])  # a quiet start: its maximum is 4 log10 units below the clip's
    quiet = 3 * FRAMES_PER_SECOND
    whole = log_mel_spectrogram(audio)[:, :quiet]
    assert torch.allclose(_window(audio, clip_maximum(audio), quiet), whole, atol=1e-5)
    assert not torch.allclose(_window(audio, None, quiet), whole, atol=1e-2)
