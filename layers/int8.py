"""int8 linear layers for CPUs: weights in int8 with one scale per output channel, activations quantised
on the fly at each call (PyTorch's dynamic int8 kernels, fbgemm or oneDNN on x86).

For the decoder's few rows per step they are 2-4x faster than float32 or bfloat16 matmuls, and for the
encoder's hundreds of rows 2.5x faster than float32 (but half the speed of native bfloat16):
docs/benchmarks.md, "int8 on the CPU". Inputs and outputs keep their dtype; the kernel runs in float32.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor, nn

__all__ = ["Int8Linear", "int8_available", "quantize_linears"]


@functools.cache
def int8_available() -> bool:
    """Whether this build of torch has the dynamic int8 linear kernels on this CPU."""
    try:
        Int8Linear(torch.ones(2, 4), None)(torch.ones(1, 4))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8 (symmetric, per output channel) and x quantised per call.

    reduce_range: quantise x to 7 bits, not 8 (PyTorch's own default on x86): a CPU without VNNI sums
    pairs of products in 16 bits, which 8-bit activations can saturate. With VNNI, 8 bits halve the
    logits' error (docs/benchmarks.md)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, reduce_range: bool = True) -> None:
        super().__init__()
        self.reduce_range = reduce_range
        weight = weight.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated as a public API; the kernels remain
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                                   torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(
                quantized, None if bias is None else bias.detach().float().cpu())
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduce_range: bool = True) -> Int8Linear:
        return cls(linear.weight, linear.bias, reduce_range)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, self.reduce_range)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(module: nn.Module, keep: tuple[str, ...] = (), reduce_range: bool = True) -> int:
    """Replace every nn.Linear inside module, except those named in keep, by an Int8Linear of its weights;
    returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name not in keep:
            setattr(module, name, Int8Linear.from_linear(child, reduce_range))
            count += 1
        elif not isinstance(child, nn.Linear):
            count += quantize_linears(child, keep, reduce_range)
    return count
