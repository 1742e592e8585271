"""Caption events a streaming session emits. Times are audio seconds from the start of the stream."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Word", "Partial", "Final", "Event", "event_to_dict"]


@dataclass(frozen=True)
class Word:
    word: str  # as spoken, with punctuation, no leading space
    start: float
    end: float
    probability: float
    speaker: str | None = None  # diarize=true: "S1", "S2", ... in order of first appearance


@dataclass(frozen=True)
class Partial:
    """The current hypothesis of an open segment; `stable` is a prefix of `text` that will not change."""

    segment: int
    text: str
    stable: str
    start: float  # segment start
    end: float  # audio heard so far
    words: list[Word] = field(default_factory=list)  # the stable words, with their times so far
    language: str = "en"  # the language spoken (with task=translate, the text is its English translation)


@dataclass(frozen=True)
class Final:
    """A segment's last word: sent once, never changed; its text starts with every stable partial text."""

    segment: int
    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)
    language: str = "en"  # the language spoken (with task=translate, the text is its English translation)
    speaker: str | None = None  # diarize=true: the speaker of most of its speech (each word has its own)


Event = Partial | Final


def event_to_dict(event: Event) -> dict:
    """The event as the native protocol's JSON message."""
    kind = "partial" if isinstance(event, Partial) else "final"
    message = {"type": kind, **asdict(event)}
    if message.get("speaker", "") is None:  # speaker labels only where the stream asked for them
        del message["speaker"]
    for word in message["words"]:
        if word["speaker"] is None:
            del word["speaker"]
    return message
