"""CTranslate2 Whisper directories: `model.bin` (binary version 6), `config.json`, `tokenizer.json`.

The weights may come in parts (`model.bin.part1`, `model.bin.part2`, ... as the named models of
model/catalog.py are packaged): they are read in order as one stream, hashed as they are read,
and never joined on disk.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import Checkpoint, Names, our_state, read_json
from .errors import ModelError
from .whisper import ModelDimensions

__all__ = ["read_ct2", "load_ct2"]

CT2_BINARY_VERSION = 6
_CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
_CT2_ITEM_SIZE = {torch.float32: 4, torch.int8: 1, torch.int16: 2, torch.int32: 4, torch.float16: 2, torch.bfloat16: 2}
NAMES = Names(
    top={"encoder.conv1": "encoder/conv1", "encoder.conv2": "encoder/conv2", "encoder.ln_post": "encoder/layer_norm",
         "encoder.positional_embedding": "encoder/position_encodings/encodings",
         "decoder.token_embedding.weight": "decoder/embeddings/weight",
         "decoder.positional_embedding": "decoder/position_encodings/encodings", "decoder.ln": "decoder/layer_norm"},
    block={"attn_ln": "{side}/layer_{i}/self_attention/layer_norm", "attn.qkv": "{side}/layer_{i}/self_attention/linear_0",
           "attn.out": "{side}/layer_{i}/self_attention/linear_1", "mlp_ln": "{side}/layer_{i}/ffn/layer_norm",
           "mlp.0": "{side}/layer_{i}/ffn/linear_0", "mlp.2": "{side}/layer_{i}/ffn/linear_1",
           "cross_attn_ln": "{side}/layer_{i}/attention/layer_norm",
           "cross_attn.query": "{side}/layer_{i}/attention/linear_0",
           "cross_attn.kv": "{side}/layer_{i}/attention/linear_1", "cross_attn.out": "{side}/layer_{i}/attention/linear_2"},
    weight={"linear": "weight", "norm": "gamma"},
    bias={"linear": "bias", "norm": "beta"},
    separator="/",
)


def load_ct2(path: Path, name: str, parts: Sequence[Path] = (), sha256: str | None = None) -> Checkpoint:
    """The checkpoint of a CTranslate2 directory; parts: its model.bin in pieces (default: path/model.bin).
    sha256: the digest the joined weights must have."""
    parts = list(parts) or [path / "model.bin"]
    for needed in [*parts, path / "config.json", path / "tokenizer.json"]:
        if not needed.is_file():
            raise ModelError(f"{path}: {needed.name} is missing")
    variables, digest = read_ct2(parts)
    if sha256 is not None and digest != sha256:
        raise ModelError(f"{parts[0]}: the weights' SHA-256 is {digest}, not the {sha256} this release of captioner "
                         f"was built for; the files are corrupt or not the ones {name!r} names")
    config = read_json(path / "config.json")
    if any(key.endswith("_scale") for key in variables):
        raise ModelError(f"{path}: int8-quantized CTranslate2 files are not supported; convert with float16 or float32")
    try:
        dims = _ct2_dims(variables)
        state = our_state(NAMES, variables.__getitem__, {"encoder": dims.n_audio_layer, "decoder": dims.n_text_layer})
    except KeyError as e:
        raise ModelError(f"{path}: variable {e} is missing; not a complete Whisper model") from e
    heads = [(int(h[0]), int(h[1])) for h in config.get("alignment_heads", [])] or None
    suppress = list(config.get("suppress_ids", [])) or None
    return Checkpoint(dims, state, path / "tokenizer.json", parts[0], name, heads, suppress, digest)


def read_ct2(parts: Path | Sequence[Path]) -> tuple[dict[str, Tensor], str]:
    """Variables of a CTranslate2 model.bin (binary version 6) by name, aliases resolved, and the file's SHA-256.

    parts: the file, or its pieces in order."""
    parts = [parts] if isinstance(parts, Path) else list(parts)
    reader = _Reader(parts)
    try:
        return reader.variables(), reader.finish()
    finally:
        reader.close()


class _Reader:
    """Reads the parts of one file in order as one stream, hashing every byte."""

    def __init__(self, parts: list[Path]) -> None:
        self.path = parts[0]
        self.sizes = [p.stat().st_size for p in parts]
        self.files = [open(p, "rb") for p in parts]
        self.current = 0
        self.offset = 0
        self.digest = hashlib.sha256()

    def close(self) -> None:
        for f in self.files:
            f.close()

    def take(self, n: int) -> bytes:
        chunks = []
        while n > 0 and self.current < len(self.files):
            chunk = self.files[self.current].read(n)
            if len(chunk) < n:
                self.current += 1
            chunks.append(chunk)
            n -= len(chunk)
        if n > 0:
            raise ModelError(f"{self.path}: file ends early at byte {sum(self.sizes)}; it is truncated or corrupt")
        data = b"".join(chunks)
        self.digest.update(data)
        self.offset += len(data)
        return data

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

    def finish(self) -> str:
        """The SHA-256 of the whole file, once every byte is read (raises ModelError for trailing bytes)."""
        if self.offset != sum(self.sizes):
            raise ModelError(f"{self.path}: {sum(self.sizes) - self.offset} unexpected bytes after the model; "
                             "the file is corrupt")
        return self.digest.hexdigest()

    def variables(self) -> dict[str, Tensor]:
        """Every variable of the file, by name, aliases resolved."""
        path, reader = self.path, self
        version = reader.u32()
        if version != CT2_BINARY_VERSION:
            raise ModelError(f"{path}: CTranslate2 binary version {version} is not supported "
                             f"(expected {CT2_BINARY_VERSION})")
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
        return variables


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
