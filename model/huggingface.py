"""Hugging Face `WhisperForConditionalGeneration` directories (`config.json`, `model.safetensors`, `tokenizer.json`)."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import Checkpoint, Names, our_state, read_json
from .errors import ModelError
from .whisper import ModelDimensions

__all__ = ["load_huggingface"]

_LAYER = "{side}.layers.{i}."
NAMES = Names(
    top={"encoder.conv1": "encoder.conv1", "encoder.conv2": "encoder.conv2", "encoder.ln_post": "encoder.layer_norm",
         "encoder.positional_embedding": "encoder.embed_positions.weight",
         "decoder.token_embedding.weight": "decoder.embed_tokens.weight",
         "decoder.positional_embedding": "decoder.embed_positions.weight", "decoder.ln": "decoder.layer_norm"},
    block={ours: _LAYER + theirs for ours, theirs in [
        ("attn_ln", "self_attn_layer_norm"), ("attn.query", "self_attn.q_proj"), ("attn.key", "self_attn.k_proj"),
        ("attn.value", "self_attn.v_proj"), ("attn.out", "self_attn.out_proj"), ("mlp_ln", "final_layer_norm"),
        ("mlp.0", "fc1"), ("mlp.2", "fc2"), ("cross_attn_ln", "encoder_attn_layer_norm"),
        ("cross_attn.query", "encoder_attn.q_proj"), ("cross_attn.key", "encoder_attn.k_proj"),
        ("cross_attn.value", "encoder_attn.v_proj"), ("cross_attn.out", "encoder_attn.out_proj")]},
    weight={"linear": "weight", "norm": "weight"},
    bias={"linear": "bias", "norm": "bias"},
)


def load_huggingface(path: Path) -> Checkpoint:
    config = read_json(path / "config.json")
    if "WhisperForConditionalGeneration" not in config.get("architectures", []) and config.get("model_type") != "whisper":
        raise ModelError(f"{path}: config.json is not a Whisper model's")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path}: model.safetensors is missing (sharded and .bin checkpoints are not supported)")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path}: tokenizer.json is missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        theirs = {k.removeprefix("model."): v for k, v in load_file(weights).items()}
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path}: model.safetensors is unreadable ({e})") from e
    try:
        dims = ModelDimensions(
            n_mels=config["num_mel_bins"], n_audio_ctx=config["max_source_positions"], n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"], n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"], n_text_ctx=config["max_target_positions"], n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"],
        )
        state = our_state(NAMES, theirs.__getitem__, {"encoder": dims.n_audio_layer, "decoder": dims.n_text_layer})
    except KeyError as e:
        raise ModelError(f"{path}: {e} is missing; not a complete Whisper model") from e
    generation = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    heads = [(int(h[0]), int(h[1])) for h in generation.get("alignment_heads") or []] or None
    suppress = generation.get("suppress_tokens") or config.get("suppress_tokens") or None
    return Checkpoint(dims, state, path / "tokenizer.json", weights, path.name, heads, suppress)
