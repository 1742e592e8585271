"""The `captioner` command: it parses arguments and calls the service and the tools; each command's work
lives in the module it names (server/app.py, tools/transcribe.py, tools/simulate.py, tools/evaluate.py,
tools/replay.py, tools/soak.py, tools/listen.py).

One error path: a usage error (argparse's, or a flag or setting with a bad value: UsageError) and any other
CaptionerError print one line, `captioner: error: ...`, on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from captioner.model.errors import CaptionerError, UsageError
from captioner.model.loading import DTYPES

__all__ = ["main", "build_parser", "UsageError"]

USAGE_STATUS = 2  # argparse's exit status for a usage error, and ours for every CaptionerError


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error raises UsageError (one line: the error and where help is) instead of
    printing the usage and exiting; subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        return int(args.run(args) or 0)
    except CaptionerError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return USAGE_STATUS
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="captioner", description="Live captions from speech, with Whisper.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_transcribe(commands)
    _add_eval(commands)
    _add_replay(commands)
    _add_soak(commands)
    _add_listen(commands)
    _add_models(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from captioner.server.settings import setting_docs

    p = commands.add_parser(
        "serve", help="run the live-caption service",
        description="Run the streaming service: WebSocket streams (native /v1/stream, Vosk at /, Deepgram at "
        "/v1/listen), /healthz, /readyz, /metrics and the caption page at /. Every option can also be set as "
        "CAPTIONER_<OPTION> in the environment or as a key in a TOML file (--config).",
    )
    p.add_argument("--config", default=None,
                   help="TOML file of settings, keys as the long options with _ (default: none)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for doc in setting_docs():
        group = groups.get(doc.group) or groups.setdefault(doc.group, p.add_argument_group(doc.group.lower()))
        flag = "--" + doc.name.replace("_", "-")
        default = "none" if doc.default in (None, ()) else doc.default
        if doc.kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{doc.help} (default: {'on' if default else 'off'})")
        else:  # converted, checked and reported with the TOML file's and the environment's values
            comma = "; comma-separated" if "tuple" in doc.kind else ""
            group.add_argument(flag, default=None, metavar=doc.name.upper(),
                               help=f"{doc.help}{comma}" + ("" if "default:" in doc.help else f" (default: {default})"))
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from captioner.server.app import run_service
    from captioner.server.settings import load_settings, setting_docs

    overrides = {doc.name: getattr(args, doc.name) for doc in setting_docs()}
    try:
        settings = load_settings(overrides, args.config)
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(str(e)) from None
    run_service(settings)
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="tiny.en (default, embedded), base, small, or a checkpoint path; `captioner models` lists them")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    parser.add_argument(
        "--dtype", default=None, choices=list(DTYPES), help="default: float16 on GPU; bfloat16 on a CPU that has it natively, else float32"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all cores)")


def _load(args: argparse.Namespace):  # noqa: ANN202
    import torch

    from captioner.model.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, args.device, DTYPES[args.dtype] if args.dtype else None)


def _add_transcribe(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("transcribe", help="transcribe an audio file", description="Transcribe an audio file.")
    p.add_argument("file", type=Path)
    p.add_argument("--format", default="text", choices=["text", "json", "jsonl", "srt", "vtt"],
                   help="default: %(default)s; jsonl (every event, with --stream)")
    p.add_argument("--beam", type=int, default=5, help="beam size; 1 decodes greedily (default: %(default)s)")
    p.add_argument("--word-timestamps", action="store_true", help="add word times (json)")
    p.add_argument("--stream", action="store_true",
                   help="run the file through a streaming session on a simulated real-time clock")
    p.add_argument("--chunk-ms", type=int, default=100, help="with --stream: audio per chunk (default: %(default)s)")
    p.add_argument("--strategy", default="window", choices=["window", "cached"],
                   help="with --stream: partial-update encoder (default: %(default)s)")
    p.add_argument("--language", default=None,
                   help="spoken language (de, es, ...; auto: detected); default: English")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                   help="translate: English text of speech in another language (default: %(default)s)")
    p.add_argument("--keywords-file", type=Path, default=None,
                   help="words and phrases the speech is likely to contain, one per line; decoding favours them")
    p.add_argument("--diarize", action="store_true", help="label each caption and word with its speaker (S1, S2, ...)")
    _add_model_options(p)
    p.set_defaults(run=_run_transcribe)


def _run_transcribe(args: argparse.Namespace) -> int:
    from captioner.model.errors import ModelError
    from captioner.stream.audio import load_audio
    from captioner.stream.jobs import Speech
    from captioner.tools.formats import transcript_to
    from captioner.tools.simulate import stream_file
    from captioner.tools.transcribe import TranscribeOptions, label_speakers, transcribe

    if args.format == "jsonl" and not args.stream:
        raise UsageError("--format jsonl needs --stream")
    audio = load_audio(args.file)
    model = _load(args)
    keywords = _read_keywords(args.keywords_file) if args.keywords_file else ()
    speech = Speech(args.language or "en", args.task, keywords, args.diarize)
    try:
        speech.check(model.tokenizer)
    except ValueError as e:
        raise ModelError(f"{model.name}: {e}") from None
    if args.stream:
        sys.stdout.write(stream_file(model, audio, args.strategy, args.chunk_ms, args.format, speech))
        return 0
    options = TranscribeOptions(beam_size=args.beam, word_timestamps=args.word_timestamps or args.diarize,
                                language=speech.language, task=speech.task, keywords=keywords)
    transcript = transcribe(model, audio, options)
    if args.diarize:
        transcript = label_speakers(transcript, audio)
    sys.stdout.write(transcript_to(transcript, args.format))
    return 0


def _read_keywords(path: Path) -> tuple[str, ...]:
    """A keywords file: one word or phrase per line; blank lines and lines starting with # are skipped."""
    from captioner.stream.jobs import clean_keywords

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--keywords-file {path}: {e}") from None
    return clean_keywords(line for line in lines if not line.lstrip().startswith("#"))


def _add_eval(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval", help="score transcription against a manifest", description="Word error rate over a manifest."
    )
    p.add_argument("manifest", type=Path, help="JSON lines: id, audio, text (paths relative to the manifest)")
    p.add_argument("--limit", type=int, default=None, help="first N clips only")
    p.add_argument("--beam", type=int, default=5, help="beam size; 1 decodes greedily (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("eval-results.json"), help="results file (default: %(default)s)")
    _add_model_options(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from captioner.tools.evaluate import evaluate

    return evaluate(_load(args), args.manifest, args.limit, args.beam, args.out)


def _add_server_options(p: argparse.ArgumentParser) -> None:
    """Where the client tools connect, and how."""
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="server: its base URL or the /v1/stream URL it "
                   "prints (default: %(default)s)")
    p.add_argument("--token", default=None, help="access token (default: $CAPTIONER_TOKEN)")
    p.add_argument("--cafile", default=None, help="CA certificate to trust for wss:// (default: the system's)")


def _add_replay(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "replay", help="stream an audio file (or a manifest's clips) to a server and show the captions",
        description="Stream audio files to a captioner server at real-time pace and show the live captions.",
    )
    p.add_argument("file", type=Path, help="an audio file, or a manifest (.jsonl) to replay clip by clip with WER")
    _add_server_options(p)
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 sends as fast as the server reads "
                   "(default: %(default)s)")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default: %(default)s)")
    p.add_argument("--format", default="text", choices=["text", "json", "srt", "vtt"],
                   help="what goes to stdout: live text, or the finished captions as json, srt or vtt "
                   "(default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="also write FILE.txt, .srt, .vtt and .json (every "
                   "message with its receive time) into this folder")
    p.add_argument("--diarize", action="store_true", help="ask for speaker labels (S1, S2, ...) on every final")
    p.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from captioner.tools.replay import replay_files

    return replay_files(args.file, args.url, _token(args), args.cafile, args.speed, args.chunk_ms, args.format,
                        args.out, {"diarize": "true"} if args.diarize else None)


def _add_soak(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "soak", help="latency soak: N real-time clients against a server, with a report",
        description="Stream real speech from N real-time clients (ramped up) to a running server for a set "
        "time, scrape its /metrics, and write a report (JSON, Markdown, PNG plots). With --sweep, run one "
        "soak per level and find the largest number of streams that holds the lag target.",
    )
    _add_server_options(p)
    p.add_argument("--streams", type=int, default=4, help="concurrent clients, 1 to 256 (default: %(default)s)")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the clients join "
                   "(default: %(default)s)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of audio each client streams, "
                   "5 to 3600 (default: %(default)s)")
    p.add_argument("--manifest", type=Path, default=Path("samples/manifest.jsonl"),
                   help="clips to stream (JSON lines: id, audio, text) (default: %(default)s)")
    p.add_argument("--report", type=Path, default=Path("soak-report"), help="report folder (default: %(default)s)")
    p.add_argument("--sweep", default=None, help="comma-separated levels of N, e.g. 1,2,4,8,16: one soak each, "
                   "stopping after the first that misses the target")
    p.add_argument("--target", type=float, default=2.0, help="final-lag p95 target in seconds "
                   "(default: %(default)s)")
    p.add_argument("--metrics-url", default=None, help="the server's /metrics (default: on the --url host and "
                   "port; give it when the server has an --admin-port)")
    p.add_argument("--coincide", action="store_true", help="every client streams the same clips, 0.5 s after the "
                   "one before, so that speech and pauses line up (instead of --ramp)")
    p.set_defaults(run=_run_soak)


def _run_soak(args: argparse.Namespace) -> int:
    from captioner.tools.soak import run_soak

    try:
        levels = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.streams]
    except ValueError:
        raise UsageError(f"--sweep takes numbers like 1,2,4,8, not {args.sweep!r}") from None
    return run_soak(args.url, _token(args), args.cafile, levels, args.duration, args.ramp, args.target,
                    args.manifest, args.report, args.metrics_url, args.coincide)


def _add_listen(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("listen", help="print a session's live captions from the MQTT broker",
                            description="Watch the captions of a session through the MQTT broker.")
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="broker (default: %(default)s)")
    p.add_argument("--topic", default="+", help="the session's topic (?topic= of its client, or its session "
                   "id); + for every session (default: %(default)s)")
    p.add_argument("--prefix", default="captioner", help="topic prefix (default: %(default)s)")
    p.set_defaults(run=_run_listen)


def _run_listen(args: argparse.Namespace) -> int:
    from captioner.tools.listen import listen

    return listen(args.mqtt_url, args.topic, args.prefix)


def _add_models(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("models", help="list the named models and where they are installed",
                            description="List the models --model takes by name: installed or not, size, languages, "
                            "and where the files are (or how to install them).")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from captioner.model.catalog import MODELS, locate

    for name, model in MODELS.items():
        languages = "English" if model.languages == 1 else f"{model.languages} languages"
        try:
            found = locate(name)
        except CaptionerError as e:
            print(f"{name:8} {'-':>8}  {languages:13} not installed: {str(e).split(': ', 1)[1]}")
            continue
        print(f"{name:8} {found.size / 1e6:6.0f} MB  {languages:13} {found.directory}")
    return 0


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("CAPTIONER_TOKEN")


if __name__ == "__main__":
    raise SystemExit(main())
