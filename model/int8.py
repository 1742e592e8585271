"""Which parts of a loaded network run int8 linear layers on a CPU (captioner.layers.int8), by setting.

`auto`, chosen by measurement (docs/benchmarks.md, "int8 on the CPU"): the decoder always (its steps
multiply a few rows, where int8 is 2-4x faster than float32 or bfloat16), and the greedy choices' output
projection with it; the encoder only where bfloat16 is not native (over hundreds of rows int8 is 2.5x
faster than float32 and half as fast as native bfloat16). The decoder's cross-attention keys/values are
projected from the encoder's rows, so they stay with the encoder's choice. Beam search, alignment and
language detection choose by full-precision logits in every mode.
"""

from __future__ import annotations

from typing import Literal

import torch

from captioner.layers.int8 import Int8Linear, int8_available, quantize_linears

from .whisper import Whisper

__all__ = ["Int8Mode", "INT8_MODES", "int8_parts", "quantize"]

Int8Mode = Literal["auto", "decoder", "all", "off"]
INT8_MODES: tuple[str, ...] = ("auto", "decoder", "all", "off")


def int8_parts(mode: str, device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """The parts ("decoder", "encoder") that run int8 in this mode, on this device, in this dtype."""
    if mode not in INT8_MODES:
        raise ValueError(f"int8 must be one of {', '.join(INT8_MODES)}, not {mode!r}")
    if mode == "off" or device.type != "cpu" or not int8_available():
        return ()
    encoder = mode == "all" or (mode == "auto" and dtype == torch.float32)
    return ("decoder", "encoder") if encoder else ("decoder",)


def quantize(network: Whisper, parts: tuple[str, ...]) -> None:
    """Swap the linear layers of the parts for int8 ones, in place."""
    if "decoder" in parts:
        decoder = network.decoder
        quantize_linears(decoder, keep=() if "encoder" in parts else ("kv",))
        decoder.greedy_output = Int8Linear(decoder.token_embedding.weight, None)
        decoder.activations = torch.float32  # the int8 kernels' own: no conversion around each layer
    if "encoder" in parts:
        quantize_linears(network.encoder)
