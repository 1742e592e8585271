"""Does a session's memory stay bounded on a long stream? The longform recordings, fed again and again.

    python bench/buffers.py [--loops 2] [--model tiny.en] [--set FIELD=VALUE ...]

The long LibriSpeech recordings of ../shared/eval/longform (samples/two_cities.flac when absent) are
joined and fed through one Session in 1 s chunks, `--loops` times, with the default settings. After
every chunk the session's buffers are measured: mel frames and their running maxima, the prompt, the
words kept as context, the pending triggers. Prints the largest of each beside the bound the
settings allow, and fails (exit 1) if one is passed. tests/test_session.py checks the same bounds on
25 s of speech with short limits, so that the suite stays fast.
"""

from __future__ import annotations

import argparse
import sys

import harness
import torch

from captioner.stream.audio import load_audio
from captioner.stream.config import StreamConfig, parse_overrides
from captioner.stream.engine import Engine
from captioner.stream.session import Session

CHUNK = 16000  # samples fed at a time (1 s)


def bounds(config: StreamConfig) -> dict[str, float]:
    """The most each buffer may hold under the settings."""
    frames = (config.max_segment_s + config.context_s + 2) * 100
    return {"mel frames": frames, "frame maxima": frames + 3000, "prompt tokens": config.prompt_tokens,
            "context words": 200, "pending triggers": 40}


def sizes(session: Session) -> dict[str, float]:
    """What each buffer holds now."""
    buffer, planner = session._buffer, session._planner
    return {"mel frames": buffer.frames.shape[1], "frame maxima": buffer.frame_max.shape[0],
            "prompt tokens": len(planner.prompt), "context words": len(planner.said),
            "pending triggers": len(session._clock.triggers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="StreamConfig overrides")
    harness.add_model_arguments(parser)
    args = parser.parse_args()
    config = StreamConfig(**parse_overrides(args.set))
    engine = Engine(harness.load_args(args), config)
    paths = sorted((harness.EVAL / "longform").glob("ls-test-other-*.flac")) or \
        [harness.ROOT / "samples" / "two_cities.flac"]
    audio = torch.cat([load_audio(path) for path in paths])
    session = Session.for_engine(engine)
    largest = dict.fromkeys(bounds(config), 0.0)
    for _ in range(args.loops):
        for start in range(0, len(audio), CHUNK):
            session.feed(audio[start : start + CHUNK])
            largest = {name: max(largest[name], size) for name, size in sizes(session).items()}
    session.end()
    limits = bounds(config)
    print(f"{args.loops} x {len(audio) / 16000:.0f} s of speech, overrides {parse_overrides(args.set) or 'none'}")
    print(harness.table(["buffer", "largest", "bound"], [[name, largest[name], limits[name]] for name in limits]))
    sys.exit(0 if all(largest[name] <= limits[name] for name in limits) else 1)


if __name__ == "__main__":
    main()
