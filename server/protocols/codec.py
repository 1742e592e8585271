"""Audio bytes to float32 samples: little-endian PCM and G.711 (mu-law, A-law)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from captioner.server.errors import BadRequest

__all__ = ["Encoding", "BYTES_PER_SAMPLE", "decode_audio", "WholeSamples"]

Encoding = Literal["s16le", "f32le", "s32le", "mulaw", "alaw"]
BYTES_PER_SAMPLE: dict[Encoding, int] = {"s16le": 2, "f32le": 4, "s32le": 4, "mulaw": 1, "alaw": 1}


def _g711_table(kind: str) -> np.ndarray:
    codes = np.arange(256, dtype=np.int32)
    if kind == "mulaw":
        code = ~codes & 0xFF
        sign = code & 0x80
        exponent = (code >> 4) & 0x07
        mantissa = code & 0x0F
        magnitude = ((mantissa << 3) + 0x84) << exponent
        value = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    else:
        code = codes ^ 0x55
        sign = code & 0x80
        exponent = (code >> 4) & 0x07
        mantissa = code & 0x0F
        magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
        value = np.where(sign, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


_G711 = {"mulaw": _g711_table("mulaw"), "alaw": _g711_table("alaw")}


def decode_audio(data: bytes, encoding: Encoding) -> np.ndarray:
    """Float32 samples in [-1, 1] from little-endian PCM or G.711 bytes (a whole number of samples).

    Raises BadRequest("bad_audio") for float samples that are NaN or infinite.
    """
    if encoding == "s16le":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "f32le":
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise BadRequest("audio holds NaN or infinite samples", "bad_audio")
        return np.clip(samples, -1.0, 1.0)
    if encoding == "s32le":
        return (np.frombuffer(data, dtype="<i4") / 2147483648.0).astype(np.float32)
    return _G711[encoding][np.frombuffer(data, dtype=np.uint8)]


class WholeSamples:
    """Cuts a byte stream into whole samples: a frame that ends inside a sample carries its bytes to the next."""

    def __init__(self, bytes_per_sample: int) -> None:
        self.bytes_per_sample = bytes_per_sample
        self._carry = b""

    def take(self, data: bytes) -> bytes:
        data = self._carry + data
        whole = len(data) - len(data) % self.bytes_per_sample
        self._carry = data[whole:]
        return data[:whole]
