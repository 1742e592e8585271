"""Uploaded audio files (the HTTP transcription endpoints) as 16 kHz mono float32, decoded by PyAV's own FFmpeg.

FFmpeg probes the upload, but only the containers of FORMATS are opened: any other (a playlist, a concat
script, an image) is refused before its header is read, so an upload can never make FFmpeg open another
file or URL. Decoding stops as soon as the audio passes `max_seconds`, so a small upload that decodes to
hours costs no more than `max_seconds` of audio; the caller bounds the upload's size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction

import av
import av.logging
import numpy as np

from captioner.stream.audio import SAMPLE_RATE

from .errors import BadRequest

__all__ = ["FORMATS", "decode_file"]

FORMATS = ("flac", "mp3", "mp4", "m4a", "mpeg", "mpga", "ogg", "wav", "webm")  # as OpenAI's endpoints accept them
# FFmpeg's demuxers for FORMATS: mov reads mp4 and m4a, matroska webm, mp3 mpga and audio/mpeg, mpeg program streams
DEMUXERS = ("flac", "mp3", "mov", "ogg", "wav", "matroska", "mpeg")

# FFmpeg's log stays off (PyAV's default, made explicit because the server relies on it): it would write a line
# to stderr for every bad packet of a garbage upload, and the error a client gets says what it needs to know
av.logging.set_level(None)


def decode_file(data: bytes, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an uploaded file's first audio stream as mono float32 samples in [-1, 1] at `sample_rate` Hz.

    Returns shape (n_samples,); the audio lasts n_samples / sample_rate seconds. Other streams (video,
    cover art) are skipped.

    Raises:
        BadRequest: code `invalid_file` for anything but decodable audio in one of FORMATS (garbage, an
            empty file, another format, a file without an audio stream or whose audio does not decode at
            all); `audio_too_long` as soon as the decoded audio passes `max_seconds`, before the rest is
            decoded. Packets that do not decode (a damaged or cut-short file) are skipped.
    """
    try:
        # metadata_errors: a tag that is not UTF-8 does not make the audio undecodable
        with av.open(io.BytesIO(data), "r", container_options={"format_whitelist": ",".join(DEMUXERS)},
                     metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise BadRequest("the file has no audio stream", "invalid_file")
            chunks = list(_decoded(container, container.streams.audio[0], max_seconds, sample_rate))
    except (av.FFmpegError, ValueError) as e:  # av raises a few plain ValueErrors too
        raise BadRequest(f"not a decodable audio file (supported: {', '.join(FORMATS)})", "invalid_file") from e
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.clip(np.concatenate(chunks), -1.0, 1.0)  # resampling can ring just past full scale


def _decoded(
    container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float, sample_rate: int
) -> Iterator[np.ndarray]:
    """The stream's audio, resampled and downmixed, chunk by chunk. Refused once its decoded length passes
    max_seconds, counted before resampling so that no frame is resampled past the limit (one packet's frame
    at a tiny sample rate would otherwise resample to hours of audio)."""
    resampler, source = None, None
    decoded_s = Fraction(0)  # exact, so that audio of max_seconds exactly passes
    for frame in _frames(container, stream):
        decoded_s += Fraction(frame.samples, frame.sample_rate)
        if decoded_s > max_seconds:
            raise BadRequest(f"the audio is longer than the limit of {max_seconds:g} seconds", "audio_too_long")
        if (frame.format.name, frame.layout.name, frame.sample_rate) != source:  # a chained stream changes format
            if resampler is not None:
                yield from _arrays(resampler.resample(None))
            resampler, source = _resampler(sample_rate), (frame.format.name, frame.layout.name, frame.sample_rate)
        yield from _arrays(resampler.resample(frame))
    if resampler is not None:
        yield from _arrays(resampler.resample(None))


def _resampler(sample_rate: int) -> av.AudioResampler:
    """To mono float32 at sample_rate, for frames of one format, layout and rate."""
    # FFmpeg's default downmix adds channels at -3 dB, which clips loud stereo; a matrix scaled to a maximum of
    # 1 averages them instead (stereo: (L + R) / 2, as captioner.stream.audio.load_audio does)
    return av.AudioResampler(format="flt", layout="mono", rate=sample_rate, options={"rematrix_maxval": "1.0"})


def _arrays(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame.to_ndarray()[0]  # packed mono: (1, n_samples)


def _frames(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
    """The stream's decoded frames. A packet the decoder rejects is skipped, as the ffmpeg command skips it, so
    that a damaged or cut-short file gives the audio it has; one whose every packet is rejected is invalid."""
    n_decoded = n_rejected = 0
    for packet in container.demux(stream):
        try:
            frames = stream.decode(packet)
        except av.FFmpegError:
            n_rejected += 1
            continue
        n_decoded += len(frames)
        yield from frames
    if n_rejected and not n_decoded:
        raise BadRequest("no audio in the file could be decoded", "invalid_file")
