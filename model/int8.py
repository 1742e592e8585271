"""Which parts of a loaded network run int8 linear layers on a CPU (captioner.layers.int8), by setting.

`auto`, chosen by measurement (docs/benchmarks.md, "Cheaper streams"): the decoder (its steps multiply
a few rows, where int8 is 2-4x faster than float32 or bfloat16) and the greedy choices' output
projection with it, for every model. `all` adds the encoder: over hundreds of rows int8 is 2.5x
faster than float32 (and half as fast as native bfloat16), and tiny.en keeps its accuracy, but base
lost 0.9 points of WER on ../shared/eval-multi with it, so no model gets it unasked. The decoder's
cross-attention keys/values are projected from the encoder's rows, so they stay with the encoder's
choice. Beam search, alignment and language detection choose by full-precision logits in every mode.
"""

from __future__ import annotations

import torch

from captioner.layers.int8 import Int8Linear, int8_available, quantize_linears

from .cpu import cpu_has_vnni
from .whisper import Whisper

__all__ = ["INT8_MODES", "int8_parts", "quantize"]

INT8_MODES = ("auto", "decoder", "all", "off")  # --int8: the module docstring says what each runs in int8


def int8_parts(mode: str, device: torch.device) -> tuple[str, ...]:
    """The parts ("decoder", "encoder") that run int8 in this mode on this device."""
    if mode not in INT8_MODES:
        raise ValueError(f"int8 must be one of {', '.join(INT8_MODES)}, not {mode!r}")
    if mode == "off" or device.type != "cpu" or not int8_available():
        return ()
    return ("decoder", "encoder") if mode == "all" else ("decoder",)


def quantize(network: Whisper, parts: tuple[str, ...]) -> None:
    """Swap the linear layers of the parts for int8 ones, in place (8-bit activations where the CPU has VNNI)."""
    reduce_range = not cpu_has_vnni()
    if "decoder" in parts:
        decoder = network.decoder
        quantize_linears(decoder, ("kv",) if "encoder" not in parts else (), reduce_range)
        decoder.greedy_output = Int8Linear(decoder.token_embedding.weight, None, reduce_range)
        decoder.activations = torch.float32  # the int8 kernels' own: no conversion around each layer
    if "encoder" in parts:
        quantize_linears(network.encoder, (), reduce_range)
