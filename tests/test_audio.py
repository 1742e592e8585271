"""Audio input: files of any rate and channel count, and the streaming resampler."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional

from captioner.stream.audio import SAMPLE_RATE, AudioError, Resampler, load_audio


def test_load_resamples_to_16k(samples):
    """A 22.05 kHz file comes back at 16 kHz with the same duration."""
    clip = samples["LJ001-0001"]
    audio = load_audio(clip["path"])
    assert audio.dtype == torch.float32
    assert abs(len(audio) / SAMPLE_RATE - clip["duration_s"]) < 0.01


def test_load_mixes_stereo_down(tmp_path):
    """Stereo files are averaged to mono."""
    left = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    assert torch.allclose(load_audio(path), torch.from_numpy(left / 2), atol=1e-6)


def test_missing_file_is_a_clear_error(tmp_path):
    """A missing or unreadable file raises AudioError naming it."""
    with pytest.raises(AudioError, match="nothing.wav"):
        load_audio(tmp_path / "nothing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError):
        load_audio(tmp_path / "junk.wav")


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_resampler_matches_torchaudio_in_any_chunking(samples, rate):
    """Pushing audio in random chunks gives torchaudio's resampling of the whole signal."""
    signal = load_audio(samples["1688-142285-0000"]["path"])[: 3 * SAMPLE_RATE]
    rng = random.Random(rate)
    resampler = Resampler(rate)
    pieces, start = [], 0
    while start < len(signal):
        size = rng.randint(1, 4000)
        pieces.append(resampler.push(signal[start : start + size]))
        start += size
    pieces.append(resampler.finish())
    expected = torchaudio.functional.resample(signal, rate, SAMPLE_RATE)
    got = torch.cat(pieces)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=2e-5)
