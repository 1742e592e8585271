"""Uploaded audio files decoded to 16 kHz mono (server/audiofile.py): every format OpenAI accepts, made by PyAV
from a real clip, and what is not audio or is too long refused with a code."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional

from captioner.server import audiofile
from captioner.server.audiofile import FORMATS, decode_file
from captioner.server.errors import BadRequest

RATE = 22050  # LJ001-0001's own: every file is resampled
CLIP_S = 3.0
# id (a name in FORMATS), PyAV muxer, codec, the codec's sample rate, lossless
ENCODINGS = [
    ("wav", "wav", "pcm_s16le", RATE, True),
    ("flac", "flac", "flac", RATE, True),
    ("mp3", "mp3", "libmp3lame", RATE, False),
    ("mp4", "mp4", "aac", RATE, False),
    ("m4a", "ipod", "aac", RATE, False),
    ("mpeg", "mpeg", "mp2", RATE, False),  # an MPEG program stream
    ("mpga", "mp2", "mp2", RATE, False),  # MPEG audio, layer II
    ("ogg", "ogg", "libopus", 48000, False),
    ("webm", "webm", "libopus", 48000, False),
]


@pytest.fixture(scope="module")
def clip(samples) -> np.ndarray:
    """3 s of LJ001-0001 at its own 22.05 kHz, float32."""
    data, rate = soundfile.read(samples["LJ001-0001"]["path"], dtype="float32", frames=int(CLIP_S * RATE))
    assert rate == RATE
    return data


@pytest.fixture(scope="module")
def reference(clip) -> np.ndarray:
    """The clip at 16 kHz, resampled by torchaudio."""
    return torchaudio.functional.resample(torch.from_numpy(clip), RATE, 16000).numpy()


def encode(pcm: np.ndarray, rate: int, muxer: str, codec: str, codec_rate: int | None = None,
           video: bool = False) -> bytes:
    """pcm (n_samples,) or (n_samples, n_channels) float32 at `rate`, as an in-memory file made by PyAV;
    `video`: with a VP8 video stream too."""
    pcm = pcm.reshape(len(pcm), -1)
    layout = "mono" if pcm.shape[1] == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as output:
        video_stream = add_video(output) if video else None
        stream = output.add_stream(codec, rate=codec_rate or rate, layout=layout)
        if video_stream is not None:
            mux_video(output, video_stream)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(stream.codec_context.codec.audio_formats[0].name, layout, codec_rate or rate)
        for resampled in resampler.resample(frame) + resampler.resample(None):
            output.mux(stream.encode(resampled))
        output.mux(stream.encode(None))
    return buffer.getvalue()


def add_video(output: av.container.OutputContainer) -> av.VideoStream:
    stream = output.add_stream("libvpx", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    return stream


def mux_video(output: av.container.OutputContainer, stream: av.VideoStream) -> None:
    """Half a second of 64x48 VP8."""
    for i in range(5):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
        output.mux(stream.encode(frame))
    output.mux(stream.encode(None))


def video_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as output:
        mux_video(output, add_video(output))
    return buffer.getvalue()


def aiff() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1600, np.float32), 16000, format="AIFF")
    return buffer.getvalue()


def aligned_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 1600) -> float:
    """The correlation coefficient of the two at the lag (up to max_lag samples) that aligns them best: lossy
    codecs delay or pad the audio a little."""
    n = min(len(decoded), len(reference))
    a, b = decoded[:n], reference[:n]
    size = 2 * n
    cross = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(cross[lags])])
    a, b = (a[lag:], b[:n - lag]) if lag >= 0 else (a[:n + lag], b[-lag:])
    return float(np.corrcoef(a, b)[0, 1])


def rms(x: np.ndarray) -> float:
    """Root mean square: the signal's level."""
    return float(np.sqrt(np.mean(np.square(x))))


@pytest.mark.parametrize(("muxer", "codec", "codec_rate", "lossless"), [e[1:] for e in ENCODINGS],
                         ids=[e[0] for e in ENCODINGS])
def test_every_format_decodes_to_the_clip_at_16khz(clip, reference, muxer, codec, codec_rate, lossless):
    """Each of OpenAI's formats decodes to float32 mono 16 kHz audio of the clip's length that matches it
    (closely when lossless; in shape and energy when lossy)."""
    decoded = decode_file(encode(clip, RATE, muxer, codec, codec_rate), max_seconds=10)
    assert decoded.dtype == np.float32 and decoded.ndim == 1 and np.abs(decoded).max() <= 1.0
    if lossless:
        assert abs(len(decoded) - len(reference)) <= 2
        assert aligned_correlation(decoded, reference, max_lag=0) > 0.999
    else:
        assert abs(len(decoded) / 16000 - CLIP_S) < 0.15
        assert aligned_correlation(decoded, reference) > 0.9
        assert rms(decoded) == pytest.approx(rms(reference), rel=0.2)


def test_the_test_covers_every_format():
    """ENCODINGS makes a file of each of FORMATS."""
    assert sorted(e[0] for e in ENCODINGS) == sorted(FORMATS)


def test_16khz_mono_wav_passes_through_unchanged(reference):
    """A file already at 16 kHz mono is not resampled: its samples come back as they were written."""
    pcm = np.round(reference * 32767) / 32767
    decoded = decode_file(encode(pcm.astype(np.float32), 16000, "wav", "pcm_s16le"), max_seconds=10)
    assert len(decoded) == len(pcm) and np.abs(decoded - pcm).max() < 1e-4


def test_stereo_is_averaged_to_mono():
    """Channels are averaged, so loud stereo does not clip: L=0.8, R=0.4 gives 0.6."""
    pcm = np.stack([np.full(16000, 0.8), np.full(16000, 0.4)], axis=1).astype(np.float32)
    decoded = decode_file(encode(pcm, 16000, "wav", "pcm_s16le"), max_seconds=10)
    assert decoded.shape == (16000,) and np.allclose(decoded, 0.6, atol=1e-3)


def test_a_video_file_gives_its_audio(clip, reference):
    """The audio stream of a file that also has video is decoded; the video is skipped."""
    decoded = decode_file(encode(clip, RATE, "webm", "libopus", 48000, video=True), max_seconds=10)
    assert aligned_correlation(decoded, reference) > 0.9


def test_a_header_only_wav_is_no_audio():
    """A valid file with no samples is empty audio, not an error."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, np.float32), 16000, format="WAV")
    assert decode_file(buffer.getvalue(), max_seconds=10).shape == (0,)


NOT_AUDIO = {  # name: a function that makes the file
    "garbage": lambda: np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes(),
    "empty": lambda: b"",
    "text": lambda: "Not audio at all, just a line of text.\n".encode() * 50,
    "video_only": video_only,
    "aiff": aiff,  # audio, but not in a format OpenAI accepts
    # a playlist would make FFmpeg open other files: it is never opened
    "playlist": lambda: b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
}


@pytest.mark.parametrize("make", NOT_AUDIO.values(), ids=NOT_AUDIO.keys())
def test_what_is_not_audio_is_an_invalid_file(make):
    """Garbage, an empty file, text, video without audio, other formats: BadRequest invalid_file."""
    with pytest.raises(BadRequest) as raised:
        decode_file(make(), max_seconds=10)
    assert raised.value.code == "invalid_file"
    assert str(raised.value) in {"the file has no audio stream",
                                 "not a decodable audio file (supported: " + ", ".join(FORMATS) + ")"}


@pytest.mark.parametrize(("muxer", "codec", "codec_rate"), [e[1:4] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS])
def test_damaged_files_decode_or_are_invalid(clip, muxer, codec, codec_rate):
    """A file cut short or with bytes overwritten decodes to what is left or is an invalid file, nothing else."""
    data = bytearray(encode(clip, RATE, muxer, codec, codec_rate))
    rng = np.random.default_rng(1)
    damaged = bytes(data[:len(data) // 2]), bytes(data)
    for i in rng.integers(0, len(data), len(data) // 100):
        data[i] = int(rng.integers(0, 256))
    for file in (*damaged[:1], bytes(data)):
        try:
            decoded = decode_file(file, max_seconds=10)
        except BadRequest as e:
            assert e.code == "invalid_file"
        else:
            assert decoded.dtype == np.float32 and np.abs(decoded).max(initial=0) <= 1.0


STREAMABLE = [e for e in ENCODINGS if e[0] not in ("mp4", "m4a")]  # mp4 writes its index after the audio


@pytest.mark.parametrize(("muxer", "codec", "codec_rate"), [e[1:4] for e in STREAMABLE], ids=[e[0] for e in STREAMABLE])
def test_a_file_cut_short_gives_the_audio_it_has(clip, muxer, codec, codec_rate):
    """Half a file (an upload cut short) decodes to about half the audio; the damaged last packet is skipped."""
    data = encode(clip, RATE, muxer, codec, codec_rate)
    assert 0.25 * CLIP_S * 16000 < len(decode_file(data[:len(data) // 2], max_seconds=10)) < 0.75 * CLIP_S * 16000


@pytest.fixture
def resampled(monkeypatch) -> list[int]:
    """The samples each decode_file call hands its resampler, counted."""
    counts: list[int] = []
    real = av.AudioResampler

    class Counting:
        def __init__(self, *args, **kwargs) -> None:
            self.resampler = real(*args, **kwargs)
            counts.append(0)

        def resample(self, frame):
            counts[-1] += frame.samples if frame is not None else 0
            return self.resampler.resample(frame)

    monkeypatch.setattr(audiofile.av, "AudioResampler", Counting)
    return counts


def test_a_long_file_is_refused_before_it_is_decoded(samples, resampled):
    """Over max_seconds: BadRequest audio_too_long saying the limit, with no more than the limit decoded."""
    data = samples["1688-142285-0000"]["path"].read_bytes()  # 15 s at 16 kHz
    with pytest.raises(BadRequest) as raised:
        decode_file(data, max_seconds=1)
    assert raised.value.code == "audio_too_long"
    assert str(raised.value) == "the audio is longer than the limit of 1 seconds"
    assert 16000 - 4608 < resampled[0] <= 16000  # up to the FLAC frame (4608 samples at most) that passes 1 s


def test_a_file_of_max_seconds_exactly_passes(clip):
    """The limit is inclusive: 2 s of audio passes max_seconds=2."""
    pcm = clip[:int(2 * RATE)]
    assert len(decode_file(encode(pcm, RATE, "flac", "flac"), max_seconds=2)) == pytest.approx(32000, abs=2)


def test_audio_past_the_limit_is_never_resampled(resampled):
    """Frames are counted at their own rate before resampling: at 8 Hz, no more than the limit's 60 s are resampled
    (to 16 kHz), however long the file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(200_000, np.float32), 8, format="WAV", subtype="PCM_16")
    with pytest.raises(BadRequest) as raised:
        decode_file(buffer.getvalue(), max_seconds=60)
    assert raised.value.code == "audio_too_long" and resampled[0] <= 60 * 8


def test_ffmpeg_writes_nothing_to_stderr(capfd, clip):
    """FFmpeg's own log stays off, even for garbage and damaged files."""
    data = bytearray(encode(clip, RATE, "mp3", "libmp3lame"))
    data[len(data) // 3:len(data) // 2] = bytes(len(data) // 2 - len(data) // 3)
    for file in (NOT_AUDIO["garbage"](), NOT_AUDIO["text"](), bytes(data)):
        try:
            decode_file(file, max_seconds=10)
        except BadRequest:
            pass
    assert capfd.readouterr().err == ""
