"""A loaded Whisper checkpoint: the network assembled from captioner.encoder and captioner.decoder, its
tokenizer and the facts decoding needs about it.

`Model` is the one door to the network: the streaming core (captioner.stream) and the tools encode,
decode, align and detect languages through its methods, never through the modules themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captioner.decoder.decoding import DecodingOptions, DecodingResult, DecodingRow, DraftResult, decode, decode_drafts
from captioner.decoder.language import detect_language
from captioner.decoder.network import Cross, TextDecoder
from captioner.decoder.timing import Alignment, find_alignment
from captioner.decoder.tokenizer import Tokenizer
from captioner.encoder.network import AudioEncoder
from captioner.encoder.streaming import EncoderCache, encode_after_context, encode_cached

__all__ = ["ModelDimensions", "Whisper", "Model"]


@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int  # mel bins of the input (80, or 128 for large-v3)
    n_audio_ctx: int  # encoder positions (1500 = 30 s)
    n_audio_state: int  # encoder width
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int  # 51864 English-only, 51865+ multilingual
    n_text_ctx: int  # decoder positions (448)
    n_text_state: int
    n_text_head: int
    n_text_layer: int


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        self.decoder = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
        )


@dataclass
class Model:
    """A checkpoint ready for inference; every method runs under torch.inference_mode."""

    network: Whisper
    tokenizer: Tokenizer
    name: str  # e.g. "tiny.en"
    checksum: str  # sha256 prefix of the weights file, for logs and metrics
    alignment_heads: list[tuple[int, int]]  # (decoder layer, head) pairs for word timestamps
    suppress_tokens: tuple[int, ...]  # always forbidden tokens
    device: torch.device
    dtype: torch.dtype
    int8: tuple[str, ...] = ()  # the parts whose linear layers run in int8 (model/int8.py)

    @property
    def dims(self) -> ModelDimensions:
        return self.network.dims

    @property
    def n_mels(self) -> int:
        return self.network.dims.n_mels

    @property
    def max_frames(self) -> int:
        """Mel frames the encoder takes at most (3000 = 30 s)."""
        return 2 * self.network.dims.n_audio_ctx

    @torch.inference_mode()
    def encode(self, mel: Tensor, n_frames: Tensor | None = None) -> Tensor:
        """Encoder output (B, T / 2, D) of mel (B, n_mels, T); see AudioEncoder.forward."""
        mel = mel.to(self.device, self.dtype)
        n_frames = None if n_frames is None else n_frames.to(self.device)
        return self.network.encoder(mel, n_frames)

    @torch.inference_mode()
    def encode_cached(self, cache: EncoderCache, mel: Tensor, chunk_positions: int, tail: int) -> Tensor:
        """Streaming encoder output over the cache's completed chunks; see encoder/streaming.py encode_cached."""
        return encode_cached(self.network.encoder, cache, mel, chunk_positions, tail)

    @torch.inference_mode()
    def encode_after_context(self, cache: EncoderCache, mel: Tensor, n_context: int, tail: int, n_frozen: int = 0
                             ) -> Tensor:
        """Encoder output of mel after a context block (and a frozen one) encoded once; see encoder/streaming.py."""
        return encode_after_context(self.network.encoder, cache, mel, n_context, tail, n_frozen)

    @torch.inference_mode()
    def cross_memory(self, memory: Tensor) -> Cross:
        """The decoder's cross-attention keys and values of encoder output (B, S, D)."""
        return self.network.decoder.cross_memory(memory)

    @torch.inference_mode()
    def decode(
        self,
        memory: Tensor,
        rows: list[DecodingRow],
        options: DecodingOptions = DecodingOptions(),
        memory_lengths: Tensor | None = None,
        cross: Cross | None = None,
        generator: torch.Generator | None = None,
    ) -> list[DecodingResult]:
        """Decode rows[b] over memory[b] with the options' strategy; see captioner.decoder.decoding.decode."""
        return decode(self.network.decoder, self.tokenizer, memory, rows, options, self.suppress_tokens,
                      memory_lengths, cross, generator)

    @torch.inference_mode()
    def decode_drafts(
        self,
        memory: Tensor,
        rows: list[DecodingRow],
        memory_lengths: Tensor | None = None,
        cross: Cross | None = None,
        exact: bool = False,
    ) -> list[DraftResult]:
        """Greedy decoding of the rows, verifying their drafts first; see captioner.decoder.decoding.decode_drafts."""
        return decode_drafts(self.network.decoder, self.tokenizer, memory, rows, self.suppress_tokens,
                             self.alignment_heads, memory_lengths, cross, exact)

    @torch.inference_mode()
    def align(
        self,
        memory: Tensor,
        n_frames: list[int],
        text_tokens: list[list[int]],
        memory_lengths: Tensor | None = None,
        cross: Cross | None = None,
        sot_sequences: list[tuple[int, ...]] | None = None,
    ) -> list[Alignment]:
        """Word timings of each row's text tokens; see captioner.decoder.timing.find_alignment."""
        return find_alignment(
            self.network.decoder, self.tokenizer, memory, n_frames, text_tokens, self.alignment_heads, memory_lengths,
            cross, sot_sequences,
        )

    @torch.inference_mode()
    def detect_language(
        self, memory: Tensor, memory_lengths: Tensor | None = None, cross: Cross | None = None,
    ) -> list[dict[str, float]]:
        """Each row's probability of each language the checkpoint knows; see captioner.decoder.language."""
        return detect_language(self.network.decoder, self.tokenizer, memory, memory_lengths, cross)
