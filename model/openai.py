"""openai-whisper `.pt` checkpoints (`dims` and `model_state_dict`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import Checkpoint, Names, our_state
from .errors import ModelError
from .whisper import ModelDimensions

__all__ = ["load_openai"]

ENGLISH_VOCABULARY = 51864  # English-only checkpoints use the GPT-2 vocabulary that the default model ships
_BLOCK = "{side}.blocks.{i}."
NAMES = Names(
    top={name: name for name in ["encoder.conv1", "encoder.conv2", "encoder.ln_post", "encoder.positional_embedding",
                                 "decoder.token_embedding.weight", "decoder.positional_embedding", "decoder.ln"]},
    block={part: _BLOCK + part for part in [
        "attn_ln", "attn.query", "attn.key", "attn.value", "attn.out", "mlp_ln", "mlp.0", "mlp.2",
        "cross_attn_ln", "cross_attn.query", "cross_attn.key", "cross_attn.value", "cross_attn.out"]},
    weight={"linear": "weight", "norm": "weight"},
    bias={"linear": "bias", "norm": "bias"},
)


def load_openai(path: Path, english_tokenizer: Path) -> Checkpoint:
    """english_tokenizer: the tokenizer.json an English-only checkpoint without its own uses."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        theirs: dict[str, Tensor] = checkpoint["model_state_dict"]
    except Exception as e:  # torch.load raises many kinds for a bad file
        raise ModelError(f"{path}: not a readable openai-whisper checkpoint ({type(e).__name__}: {e})") from e
    try:
        state = our_state(NAMES, theirs.__getitem__, {"encoder": dims.n_audio_layer, "decoder": dims.n_text_layer})
    except KeyError as e:
        raise ModelError(f"{path}: weight {e} is missing; not a complete Whisper model") from e
    tokenizer = path.with_name("tokenizer.json")
    if not tokenizer.is_file():
        if dims.n_vocab != ENGLISH_VOCABULARY:
            raise ModelError(f"{path}: a multilingual checkpoint needs its tokenizer.json in the same folder")
        tokenizer = english_tokenizer
    heads = checkpoint.get("alignment_heads")
    heads = [(int(h[0]), int(h[1])) for h in heads] if isinstance(heads, list) else None
    return Checkpoint(dims, state, tokenizer, path, path.stem, heads)
