"""What every checkpoint loader returns, and the parameter names: ours, and what each format calls them.

Our network (captioner.encoder.network, captioner.decoder.network) fuses projections that the
formats keep apart: self-attention query/key/value in `attn.qkv` (the key has no bias) and the
decoder's cross-attention key/value in `cross_attn.kv`. Every loader builds our state dict from
its own table with `our_state`, so the list of what a Whisper network holds is written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ModelError
from .whisper import ModelDimensions

__all__ = ["Checkpoint", "Names", "our_state", "read_json"]

# (our module, kind) at the top of each side, and inside each block; kind "norm" or "linear"
TOP = {"encoder": [("conv1", "linear"), ("conv2", "linear"), ("ln_post", "norm")],
       "decoder": [("ln", "norm")]}
TOP_TENSORS = {"encoder": ["positional_embedding"], "decoder": ["token_embedding.weight", "positional_embedding"]}
BLOCK = [("attn_ln", "norm"), ("attn.out", "linear"), ("mlp_ln", "norm"), ("mlp.0", "linear"), ("mlp.2", "linear")]
CROSS = [("cross_attn_ln", "norm"), ("cross_attn.query", "linear"), ("cross_attn.out", "linear")]
FUSED = {"attn.qkv": ("query", "key", "value"), "cross_attn.kv": ("key", "value")}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from its files, before it becomes a Model."""

    dims: ModelDimensions
    state: dict[str, Tensor]  # in our naming
    tokenizer: Path  # tokenizer.json
    weights: Path  # the file whose checksum identifies the model
    name: str
    alignment_heads: list[tuple[int, int]] | None = None  # None: the default for its size
    suppress_tokens: list[int] | None = None  # None: Whisper's default set
    sha256: str | None = None  # of the weights, when the loader hashed them as it read them


@dataclass(frozen=True)
class Names:
    """What one format calls our parameters. Block names are templates with {side} and {i}."""

    top: dict[str, str]  # "encoder.conv1" -> theirs (module, or the tensor itself for TOP_TENSORS)
    block: dict[str, str]  # "attn_ln" -> theirs; "attn.qkv" where fused as ours, else "attn.query", "attn.key", ...
    weight: dict[str, str]  # kind -> their name of the weight ("norm": "gamma" in CTranslate2)
    bias: dict[str, str]
    separator: str = "."


def our_state(names: Names, get: Callable[[str], Tensor], n_layers: dict[str, int]) -> dict[str, Tensor]:
    """Our state dict from a format's tensors, read with get(their name) (raises KeyError for a missing one)."""
    sep = names.separator
    state: dict[str, Tensor] = {}

    def module(ours: str, theirs: str, kind: str) -> None:
        state[f"{ours}.weight"] = get(f"{theirs}{sep}{names.weight[kind]}")
        state[f"{ours}.bias"] = get(f"{theirs}{sep}{names.bias[kind]}")

    for side, parts in TOP.items():
        for part, kind in parts:
            module(f"{side}.{part}", names.top[f"{side}.{part}"], kind)
        for tensor in TOP_TENSORS[side]:
            state[f"{side}.{tensor}"] = get(names.top[f"{side}.{tensor}"])
    for side, count in n_layers.items():
        for i in range(count):
            theirs = {key: template.format(side=side, i=i) for key, template in names.block.items()}
            for part, kind in BLOCK + (CROSS if side == "decoder" else []):
                module(f"{side}.blocks.{i}.{part}", theirs[part], kind)
            for fused, pieces in FUSED.items():
                if side == "encoder" and fused.startswith("cross"):
                    continue
                if fused in theirs:  # the format fuses them as we do
                    module(f"{side}.blocks.{i}.{fused}", theirs[fused], "linear")
                    continue
                prefix = fused.split(".")[0]
                parts = [theirs[f"{prefix}.{piece}"] for piece in pieces]
                weights = [get(f"{p}{sep}{names.weight['linear']}") for p in parts]
                biases = [None if piece == "key" else get(f"{p}{sep}{names.bias['linear']}") for p, piece in zip(parts, pieces)]
                state[f"{side}.blocks.{i}.{fused}.weight"] = torch.cat(weights)
                state[f"{side}.blocks.{i}.{fused}.bias"] = torch.cat(
                    [b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype) for b, w in zip(biases, weights)])
    return state


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable JSON ({e})") from e
