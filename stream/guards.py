"""Loop guards: how much of a decoded hypothesis the audio supports, and where it starts to repeat itself.

Pure functions of tokens and attention peaks, shared by partial updates and finals.
"""

from __future__ import annotations

import statistics

__all__ = ["supported_length", "repeat_start", "trim_repetition"]

JUMP_BACK_POSITIONS = 50  # 1 s of encoder positions
LOOP_TOKENS = 8  # a jump back that lasts this many tokens (or to the end) is a loop
PEAK_WINDOW = 5  # tokens: how far the text has got is the running maximum of peaks' medians over this many
REPEAT_NGRAM = 10  # tokens: a run this long said twice in a segment is a decoding loop
TAIL_REPEAT = 5  # tokens: a segment that ends by saying this many of its tokens again is looping


def supported_length(peaks: list[int], tokens: list[int], n_prefix: int, n_audio: int | None = None) -> int:
    """How many new tokens (after n_prefix) the audio supports, judged by where the alignment heads look.

    peaks[k] is the audio position the query predicting tokens[k] attends to most. A hypothesis may
    run on into text the audio does not hold: words read into the silence padding (a peak at or
    past n_audio), or a loop back over earlier words: the peaks jump back more than a second behind
    the text so far, for LOOP_TOKENS tokens or up to the end, and the text there says again what it
    said before. A short jump back is not a loop: repeated phrases ("it was the ...") and the last
    tokens of a segment draw the heads back for a token or two. How far the text has got is judged
    on peaks smoothed over PEAK_WINDOW tokens: a single query may look far ahead (the full stop of
    "Mr." at a later "Mr."), and taken alone, that would make all that follows look like a loop.
    Tokens from the first unsupported one on are dropped (after AlignAtt's stopping rule in SimulStreaming).
    """
    n_tokens = len(tokens)
    smoothed = [statistics.median_low(peaks[max(0, k - PEAK_WINDOW // 2) : k + PEAK_WINDOW // 2 + 1])
                for k in range(n_tokens)]
    furthest = max(smoothed[:n_prefix], default=0)
    for k in range(n_prefix, n_tokens):
        if n_audio is not None and peaks[k] >= n_audio:
            return k - n_prefix
        ahead = peaks[k : min(n_tokens, k + LOOP_TOKENS)]
        if tokens[k] in tokens[:k] and all(peak < furthest - JUMP_BACK_POSITIONS for peak in ahead):
            return k - n_prefix
        furthest = max(furthest, smoothed[k])
    return n_tokens - n_prefix


def repeat_start(tokens: list[int], start: int, own: int = 0) -> int:
    """Where, at or after `start`, tokens begin to say again what they said before; len(tokens) if nowhere.

    A decoder that has lost its place in the audio reads the segment again. Speech within one
    segment practically never repeats REPEAT_NGRAM tokens anywhere, nor ends by repeating
    TAIL_REPEAT tokens of its own (the tail loop of a final that runs past the speech). The
    tokens before `own` are earlier segments' text, decoded as context: a speaker may say that
    again (a sentence repeated for dictation, a refrain), so it does not count as said before; a
    decoder that reads the context's audio again is caught by its attention (supported_length).
    """
    n = REPEAT_NGRAM
    seen: set[tuple[int, ...]] = set()
    found = len(tokens)
    for j in range(own, len(tokens) - n + 1):
        run = tuple(tokens[j : j + n])
        if j >= start and run in seen:
            found = j
            break
        seen.add(run)
    for j in range(start, min(found, len(tokens) - TAIL_REPEAT + 1)):
        tail = tokens[j:]
        if any(tokens[i : i + len(tail)] == tail for i in range(own, j - len(tail) + 1)):
            return j
    return found


def trim_repetition(tokens: list[int], times: int = 3, longest: int = 12) -> list[int]:
    """Cut a trailing loop: a run of 1..longest tokens repeated `times` times or more keeps one copy."""
    for period in range(1, longest + 1):
        if len(tokens) < period * times:
            break
        unit = tokens[len(tokens) - period :]
        repeats = 1
        while (repeats + 1) * period <= len(tokens) and tokens[len(tokens) - (repeats + 1) * period : len(tokens) - repeats * period] == unit:
            repeats += 1
        if repeats >= times:
            return tokens[: len(tokens) - (repeats - 1) * period]
    return tokens
