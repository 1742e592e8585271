"""Whisper's tokenizer, from a checkpoint's Hugging Face `tokenizer.json`.

Text tokens are GPT-2 byte-level BPE. Special tokens are looked up by name, so English-only and
multilingual vocabularies both work; timestamp tokens follow `<|notimestamps|>` in 0.02 s steps
(tokenizer.json does not list them, so they are handled by arithmetic). A multilingual checkpoint's
start-of-transcript sequence names a language and a task; each stream may have its own
(`sot_sequence_for`), the tokenizer's own being the server's default.
"""

from __future__ import annotations

import functools
import re
import string
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

__all__ = ["TIME_PRECISION", "TASKS", "Tokenizer"]

TIME_PRECISION = 0.02  # seconds per timestamp token
TASKS = ("transcribe", "translate")
_PUNCTUATION = set(string.punctuation + "。，！？：”、…")
# scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Myanmar): each piece is a word unit
_UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable characters of byte-level tokens back to bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class Tokenizer:
    """Encodes text and decodes token ids for one Whisper checkpoint."""

    def __init__(self, path: str | Path, n_vocab: int, language: str = "en", task: str = "transcribe") -> None:
        self._hf = HFTokenizer.from_file(str(path))
        self.n_vocab = n_vocab
        self.multilingual = n_vocab >= 51865
        self.eot = self._special("<|endoftext|>")
        self.sot = self._special("<|startoftranscript|>")
        self.sot_prev = self._special("<|startofprev|>")
        self.sot_lm = self._special("<|startoflm|>")
        self.translate = self._special("<|translate|>")
        self.transcribe = self._special("<|transcribe|>")
        self.no_timestamps = self._special("<|notimestamps|>")
        no_speech = self._hf.token_to_id("<|nospeech|>")
        self.no_speech = no_speech if no_speech is not None else self._special("<|nocaptions|>")
        self.timestamp_begin = self.no_timestamps + 1
        # the language tokens sit between <|startoftranscript|> and <|translate|>, in the order of their ids
        self.language_tokens: dict[str, int] = {}
        if self.multilingual:
            for token in range(self.sot + 1, self.translate):
                name = self._hf.id_to_token(token) or ""
                if name.startswith("<|") and name.endswith("|>"):
                    self.language_tokens[name[2:-2]] = token
        self.language = language
        self.sot_sequence: tuple[int, ...] = self.sot_sequence_for(language, task)

    @property
    def languages(self) -> tuple[str, ...]:
        """The language codes this checkpoint knows (English alone for an English-only one)."""
        return tuple(self.language_tokens) if self.multilingual else ("en",)

    def sot_sequence_for(self, language: str, task: str = "transcribe") -> tuple[int, ...]:
        """<|startoftranscript|> [<|language|> <|task|>] for a stream; ValueError for what the checkpoint lacks."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; it is one of {', '.join(TASKS)}")
        if not self.multilingual:
            if language != "en":
                raise ValueError(f"this checkpoint is English-only; language {language!r} is not available")
            if task != "transcribe":
                raise ValueError("this checkpoint is English-only; it cannot translate")
            return (self.sot,)
        if language not in self.language_tokens:
            raise ValueError(f"unknown language {language!r}")
        return (self.sot, self.language_tokens[language], self.transcribe if task == "transcribe" else self.translate)

    def _special(self, name: str) -> int:
        token = self._hf.token_to_id(name)
        if token is None:
            raise ValueError(f"tokenizer has no {name} token")
        return token

    def encode(self, text: str) -> list[int]:
        """Text tokens of text (no special tokens); callers add the leading space Whisper expects."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """Text of the text tokens in tokens; special and timestamp tokens are dropped."""
        return self.token_bytes([t for t in tokens if t < self.eot]).decode("utf-8", errors="replace")

    def token_bytes(self, tokens: list[int]) -> bytes:
        decoder = _byte_decoder()
        return b"".join(bytes(decoder[c] for c in self._hf.id_to_token(t)) for t in tokens)

    def timestamp(self, token: int) -> float:
        """Seconds of a timestamp token."""
        return (token - self.timestamp_begin) * TIME_PRECISION

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of symbols that are not speech (openai-whisper's list), for checkpoints without one."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in [self.encode(symbol), self.encode(" " + symbol)]:
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group text tokens into words: a word starts at a token with a leading space or at punctuation.

        Tokens that end inside a multi-byte character are kept with the next token. In scripts written
        without spaces (Chinese, Japanese, Thai, ...) each piece is a word unit, whatever the stream's language.
        """
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for piece, piece_tokens in zip(*self._split_on_unicode(tokens)):
            starts_word = piece.startswith(" ") or piece.strip() in _PUNCTUATION or piece_tokens[0] >= self.eot
            if not words or starts_word or _UNSPACED.search(piece) or _UNSPACED.search(words[-1][-1:]):
                words.append(piece)
                word_tokens.append(list(piece_tokens))
            else:
                words[-1] += piece
                word_tokens[-1].extend(piece_tokens)
        return words, word_tokens

    def _split_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        pieces: list[str] = []
        piece_tokens: list[list[int]] = []
        current: list[int] = []
        for token in tokens:
            current.append(token)
            if token >= self.eot:
                pieces.append("")
                piece_tokens.append(current)
                current = []
                continue
            text = self.token_bytes(current).decode("utf-8", errors="replace")
            if "\ufffd" not in text:
                pieces.append(text)
                piece_tokens.append(current)
                current = []
        if current:
            pieces.append(self.token_bytes(current).decode("utf-8", errors="replace"))
            piece_tokens.append(current)
        return pieces, piece_tokens
